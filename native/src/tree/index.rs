//! Finding a node by its (tree id, node id): how the general path resolves children and
//! the layout finds the leaf a weight names.

use crate::attrs::invalid;
use crate::error::CompileError;
use crate::onnx::NodeView;

/// Where each (tree id, node id) is listed. Exporters list each tree's nodes together with
/// ids 0, 1, 2, ... in order; then a node is found by arithmetic (`Dense`). Anything else is
/// looked up in a hash map.
pub(super) enum NodeIndex {
    /// Tree id -> (first position, node count); the last tree looked up is remembered.
    Dense {
        trees: std::collections::HashMap<i64, (u32, u32)>,
        last: std::cell::Cell<(i64, u32, u32)>,
    },
    Map(std::collections::HashMap<(i64, i64), u32>),
}

impl NodeIndex {
    pub(super) fn new(
        node: &NodeView<'_>,
        tree_ids: &[i64],
        node_ids: &[i64],
    ) -> Result<Self, CompileError> {
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
    pub(super) fn child(
        &self,
        tree_ids: &[i64],
        node_ids: &[i64],
        k: usize,
        id: i64,
    ) -> Option<u32> {
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

    pub(super) fn get(&self, tree: i64, id: i64) -> Option<u32> {
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
