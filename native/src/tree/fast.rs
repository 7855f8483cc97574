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
use crate::pb::{ByteCursor, Cursor, Repeated};

/// Decodes the node and weight columns in one pass; `None` where the model is not in the
/// exporters' shape (or is malformed).
pub(super) fn decode<T: Num>(
    attrs: &Attrs<'_, '_>,
    classifier: bool,
    n_outputs: usize,
) -> Option<Decoded<T>> {
    let [w_trees, w_nodes, w_ids, w_values, w_tensor] = weight_names(classifier);
    if attrs.has("nodes_values_as_tensor") || attrs.has(w_tensor) {
        return None;
    }
    let mut forest = walk_nodes::<T>(attrs)?;
    let mut weights = attach_weights(
        attrs,
        [w_trees, w_nodes, w_ids, w_values],
        n_outputs,
        &mut forest,
    )?;
    forest.nodes.shrink_to_fit();
    weights.shrink_to_fit();
    Some(weights.decoded(forest.nodes, forest.roots, forest.max_feature))
}

/// An ints or floats column as a lazy list (empty when absent).
fn column<'n, 'a>(attrs: &Attrs<'n, 'a>, name: &'n str, kind: Column) -> Repeated<'a> {
    attrs.column(name, kind).unwrap_or_default()
}

/// The node columns, walked side by side.
struct NodeColumns<'a> {
    modes: ByteCursor<'a>,
    tree_ids: Cursor<'a, u64>,
    node_ids: Cursor<'a, u64>,
    features: Cursor<'a, u64>,
    values: Cursor<'a, f32>,
    trues: Cursor<'a, u64>,
    falses: Cursor<'a, u64>,
    missing: Option<Cursor<'a, u64>>,
}

/// One node's entries in the node columns.
struct Entry<'a> {
    mode: &'a [u8],
    tree: i64,
    id: i64,
    feature: i64,
    value: f32,
    true_id: i64,
    false_id: i64,
    missing_true: bool,
}

impl<'a> NodeColumns<'a> {
    /// The node columns of `attrs`, and how many bytes the modes take; `None` without
    /// modes.
    fn open(attrs: &Attrs<'_, 'a>) -> Option<(Self, usize)> {
        let modes = attrs.column("nodes_modes", Column::Strings)?;
        let columns = NodeColumns {
            modes: modes.byte_cursor(),
            tree_ids: column(attrs, "nodes_treeids", Column::Ints).cursor(),
            node_ids: column(attrs, "nodes_nodeids", Column::Ints).cursor(),
            features: column(attrs, "nodes_featureids", Column::Ints).cursor(),
            values: column(attrs, "nodes_values", Column::Floats).cursor(),
            trues: column(attrs, "nodes_truenodeids", Column::Ints).cursor(),
            falses: column(attrs, "nodes_falsenodeids", Column::Ints).cursor(),
            missing: attrs
                .column("nodes_missing_value_tracks_true", Column::Ints)
                .map(|c| c.cursor()),
        };
        Some((columns, modes.bytes()))
    }

    /// The next node's entries: `Some(None)` after the last node, `None` where a column is
    /// malformed or ends before the modes.
    #[inline(always)]
    fn next(&mut self) -> Option<Option<Entry<'a>>> {
        let Some(mode) = self.modes.next().ok()? else {
            return Some(None);
        };
        Some(Some(Entry {
            mode,
            tree: self.tree_ids.next().ok()?? as i64,
            id: self.node_ids.next().ok()?? as i64,
            feature: self.features.next().ok()?? as i64,
            value: self.values.next().ok()??,
            true_id: self.trues.next().ok()?? as i64,
            false_id: self.falses.next().ok()?? as i64,
            missing_true: match self.missing.as_mut() {
                Some(column) => column.next().ok()?? == 1,
                None => false,
            },
        }))
    }

    /// Whether every other column ends with the modes; `None` where one is malformed.
    fn all_ended(&mut self) -> Option<bool> {
        Some(
            self.tree_ids.next().ok()?.is_none()
                && self.node_ids.next().ok()?.is_none()
                && self.features.next().ok()?.is_none()
                && self.values.next().ok()?.is_none()
                && self.trues.next().ok()?.is_none()
                && self.falses.next().ok()?.is_none()
                && self
                    .missing
                    .as_mut()
                    .map_or(Some(true), |c| c.next().ok().map(|v| v.is_none()))?,
        )
    }
}

/// The trees as the columns list them, which already is their layout.
struct InOrder<T> {
    nodes: Vec<Node<T>>,
    roots: Vec<u32>,
    /// Each tree's id, beside `roots`.
    trees: Vec<i64>,
    max_feature: u32,
}

/// Walks the node columns side by side and writes each node once, in place: each tree
/// listed from its node 0 (ids counting up from the root), trees in increasing id order,
/// one child of every split right after it. `None` for anything else.
fn walk_nodes<T: Num>(attrs: &Attrs<'_, '_>) -> Option<InOrder<T>> {
    let (mut columns, mode_bytes) = NodeColumns::open(attrs)?;
    // Each node's mode takes at least six bytes on the wire ("LEAF" with key and length).
    let mut nodes: Vec<Node<T>> = crate::memory::vec_with_capacity(mode_bytes / 6);
    let mut roots: Vec<u32> = Vec::new();
    let mut trees: Vec<i64> = Vec::new();
    // The other child of every split on the path to the current node, innermost last.
    let mut pending: Vec<u32> = Vec::new();
    // Whether the last tree is complete (its walk ended at a leaf with nothing pending).
    let mut ended = true;
    let mut start = 0u32;
    let mut max_feature = 0u32;
    while let Some(entry) = columns.next()? {
        let k = u32::try_from(nodes.len())
            .ok()
            .filter(|&k| k < u32::MAX / 2 - 1)?;
        if ended {
            // A new tree: a larger id than the last one's, listed from its node 0.
            if trees.last().is_some_and(|&last| entry.tree <= last) || entry.id != 0 {
                return None;
            }
            trees.push(entry.tree);
            roots.push(k);
            start = k;
            ended = false;
        } else if trees.last() != Some(&entry.tree) || entry.id != i64::from(k - start) {
            return None;
        }
        let mode = Mode::parse(entry.mode)?;
        let mut word = u32::from(mode as u8) << WORD_BITS;
        if entry.missing_true {
            word |= u32::from(MISSING_TRUE) << WORD_BITS;
        }
        if mode == Mode::Leaf {
            // ONNX Runtime counts a leaf's feature id toward the largest one read.
            if entry.feature > 0 {
                max_feature = max_feature.max(u32::try_from(entry.feature).unwrap_or(u32::MAX));
            }
            nodes.push(Node {
                value: T::from_f32(entry.value),
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
        let feature = u32::try_from(entry.feature)
            .ok()
            .filter(|&f| f <= MAX_FEATURE)?;
        max_feature = max_feature.max(feature);
        word |= feature;
        let at = |id: i64| u32::try_from(id).ok().and_then(|id| start.checked_add(id));
        let (true_at, false_at) = (at(entry.true_id)?, at(entry.false_id)?);
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
            value: T::from_f32(entry.value),
            index,
            word,
        });
    }
    if !columns.all_ended()? || !ended || nodes.is_empty() {
        return None;
    }
    Some(InOrder {
        nodes,
        roots,
        trees,
        max_feature,
    })
}

/// Attaches the leaf weights, listed in (tree, node) order, to the leaves they name. A
/// leaf keeps its first weight as its value, its count in the word and where its weights
/// start in `index`. `None` where they are out of order or name no node.
fn attach_weights<T: Num>(
    attrs: &Attrs<'_, '_>,
    [w_trees, w_nodes, w_ids, w_values]: [&'static str; 4],
    n_outputs: usize,
    forest: &mut InOrder<T>,
) -> Option<LeafWeights<T>> {
    let keep_weights = n_outputs > 1;
    let weight_values = column(attrs, w_values, Column::Floats);
    let mut w_tree = column(attrs, w_trees, Column::Ints).cursor::<u64>();
    let mut w_node = column(attrs, w_nodes, Column::Ints).cursor::<u64>();
    let mut w_id = column(attrs, w_ids, Column::Ints).cursor::<u64>();
    let mut w_value = weight_values.cursor::<f32>();
    let mut weights = LeafWeights::<T>::new(
        if keep_weights {
            crate::memory::vec_with_capacity(weight_values.bytes() / 5)
        } else {
            Vec::new()
        },
        keep_weights,
    );
    let InOrder {
        nodes,
        roots,
        trees,
        ..
    } = forest;
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
    done.then_some(weights)
}
