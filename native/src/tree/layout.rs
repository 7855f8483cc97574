//! Laying decoded trees out as `Trees` keeps them: each tree in the file's order where that
//! already is a layout, else ONNX Runtime's depth-first relayout; leaf weights attached.

use super::ensemble::{MODE_MASK, Mode, Node, Num, TRUE_NEXT, WORD_BITS, Weight};
use super::index::NodeIndex;
use super::weights::LeafWeights;
use crate::attrs::{invalid, unsupported};
use crate::error::CompileError;
use crate::onnx::NodeView;

/// Whether a tree (attribute positions `start..end`, root first) can stay in the file's
/// order: a plain tree (every node reached exactly once) listed depth first, each split's
/// subtree right after it with one child next. Exporters write trees that way. Such a tree
/// is evaluated exactly as ONNX Runtime's relayout of it would be: the layout changes
/// where nodes sit, never which leaf a row reaches.
fn keep_in_order<T: Num>(raw: &[Raw<T>], start: usize, end: usize) -> bool {
    // Walk the tree depth first, the child listed next first, and check the walk visits
    // exactly `start..end` in order: then it is a plain tree (every node reached once)
    // listed in that order. One sequential pass and a stack of pending other children.
    let is_leaf = |r: &Raw<T>| (r.word >> WORD_BITS) as u8 & MODE_MASK == Mode::Leaf as u8;
    let mut pending: Vec<u32> = Vec::new();
    let mut i = start;
    loop {
        let r = &raw[i];
        if is_leaf(r) {
            match pending.pop() {
                None => return i + 1 == end,
                Some(next) if next as usize == i + 1 => i += 1,
                Some(_) => return false,
            }
        } else {
            let other = if r.true_at as usize == i + 1 {
                r.false_at
            } else if r.false_at as usize == i + 1 {
                r.true_at
            } else {
                return false;
            };
            pending.push(other);
            i += 1;
        }
        if i >= end {
            return false;
        }
    }
}

/// One node in attribute order with its children resolved to attribute positions: what
/// the depth-first walk reads (one 16-20 byte record instead of six columns).
#[derive(Clone, Copy)]
pub(super) struct Raw<T> {
    pub(super) value: T,
    pub(super) true_at: u32,
    pub(super) false_at: u32,
    /// Mode and missing flag on top, feature (splits) below, as in `Node::word`.
    pub(super) word: u32,
}

/// Laid-out nodes, the trees' roots and the leaf weights.
pub(super) type Laid<T> = (Vec<Node<T>>, Vec<u32>, LeafWeights<T>);

/// Lays the trees out: in the file's order where it already is a layout
/// (`keep_in_order`), else the depth-first relayout (false child next) ONNX Runtime's
/// `AddNodes` makes, without recursion (a hostile tree can be a million nodes deep).
#[allow(
    clippy::too_many_arguments,
    reason = "the node columns of one ensemble, each a separate attribute"
)]
pub(super) fn layout<T: Num>(
    node: &NodeView<'_>,
    tree_ids: &[i64],
    node_ids: &[i64],
    index: &NodeIndex,
    mut raw: Vec<Raw<T>>,
    (w_trees, w_nodes, w_ids, w_values): (&[i64], &[i64], &[u32], &[T]),
    n_outputs: usize,
) -> Result<Laid<T>, CompileError> {
    let n = raw.len();
    // Leaf weights, in (tree, node, attribute position) order, as ONNX Runtime sorts them
    // (exporters usually list them in that order already, which is attribute order too:
    // the records are then filled front to back). A leaf's record keeps its first weight
    // as its value, the count in its word and where its weights start in `true_at`.
    let mut order: Vec<u32> = (0..w_trees.len() as u32).collect();
    let sorted =
        (1..w_trees.len()).all(|k| (w_trees[k - 1], w_nodes[k - 1]) <= (w_trees[k], w_nodes[k]));
    if !sorted {
        order.sort_by_key(|&k| (w_trees[k as usize], w_nodes[k as usize], k));
    }
    let keep_weights = n_outputs > 1;
    let mut weights = LeafWeights::new(
        Vec::with_capacity(if keep_weights { order.len() } else { 0 }),
        keep_weights,
    );
    // Weight counts per attribute position (to find weights on unreachable leaves).
    let mut leaf_weights: Vec<u8> = vec![0; n];
    for &k in &order {
        let k = k as usize;
        let at = index.get(w_trees[k], w_nodes[k]).ok_or_else(|| {
            invalid(
                node,
                format!(
                    "a weight names node {} of tree {}, which does not exist",
                    w_nodes[k], w_trees[k]
                ),
            )
        })? as usize;
        let leaf = &mut raw[at];
        let weight = Weight {
            target: w_ids[k],
            value: w_values[k],
        };
        if weights
            .attach(&mut leaf.value, &mut leaf.true_at, &mut leaf.word, weight)
            .map_err(|refused| unsupported(node, refused.reason()))?
        {
            leaf_weights[at] = 1;
        }
    }

    const UNPLACED: u32 = u32::MAX;
    enum Frame {
        Enter(u32),
        AfterFalse { at: u32, pos: u32 },
        AfterTrue { at: u32, pos: u32 },
    }
    // Where each record went; only trees the relayout places need it.
    let mut placed: Vec<u32> = Vec::new();
    let mut in_progress: Vec<bool> = Vec::new();
    let mut nodes: Vec<Node<T>> = crate::memory::vec_with_capacity(n);
    let mut roots = Vec::new();
    let mut stack = Vec::new();
    let mut start = 0;
    while start < n {
        let mut end = start + 1;
        while end < n && tree_ids[end] == tree_ids[start] {
            end += 1;
        }
        if keep_in_order(&raw, start, end) {
            // The file's order already is a layout: every split has one child right after
            // it. Copy the records over as they are.
            // Record `start + k` goes to position `base + k`.
            let base = nodes.len() as u32;
            let first = start as u32;
            roots.push(base);
            for (i, r) in raw[start..end].iter().enumerate() {
                let i = start + i;
                let node = if (r.word >> WORD_BITS) as u8 & MODE_MASK == Mode::Leaf as u8 {
                    Node {
                        value: r.value,
                        index: r.true_at,
                        word: r.word,
                    }
                } else if r.true_at as usize == i + 1 {
                    Node {
                        value: r.value,
                        index: base + (r.false_at - first),
                        word: r.word | (u32::from(TRUE_NEXT) << WORD_BITS),
                    }
                } else {
                    Node {
                        value: r.value,
                        index: base + (r.true_at - first),
                        word: r.word,
                    }
                };
                nodes.push(node);
            }
            start = end;
            continue;
        }
        // Anything else (shared true children, trees split over several runs, children
        // listed before parents): ONNX Runtime's own depth-first relayout, false child
        // next, which also finds what it would refuse.
        if placed.is_empty() {
            placed = vec![UNPLACED; n];
            in_progress = vec![false; n];
        }
        stack.push(Frame::Enter(start as u32));
        let mut ret = 0u32;
        while let Some(frame) = stack.pop() {
            match frame {
                Frame::Enter(at) => {
                    let i = at as usize;
                    if tree_ids[i] != tree_ids[start] {
                        return Err(invalid(
                            node,
                            format!(
                                "a child of tree {} lies in tree {}",
                                tree_ids[start], tree_ids[i]
                            ),
                        ));
                    }
                    if placed[i] != UNPLACED {
                        if in_progress[i] {
                            return Err(invalid(
                                node,
                                format!(
                                    "tree {} has a cycle through node {}",
                                    tree_ids[i], node_ids[i]
                                ),
                            ));
                        }
                        ret = placed[i];
                        continue;
                    }
                    let r = raw[i];
                    let pos = nodes.len() as u32;
                    placed[i] = pos;
                    nodes.push(Node {
                        value: r.value,
                        // A leaf's weights start here (a split's true child is set later).
                        index: r.true_at,
                        word: r.word,
                    });
                    if (r.word >> WORD_BITS) as u8 & MODE_MASK == Mode::Leaf as u8 {
                        ret = pos;
                        continue;
                    }
                    in_progress[i] = true;
                    stack.push(Frame::AfterFalse { at, pos });
                    stack.push(Frame::Enter(r.false_at));
                }
                Frame::AfterFalse { at, pos } => {
                    if ret != pos + 1 {
                        let i = at as usize;
                        return Err(invalid(
                            node,
                            format!(
                                "the false child of node {} of tree {} is shared",
                                node_ids[i], tree_ids[i]
                            ),
                        ));
                    }
                    stack.push(Frame::AfterTrue { at, pos });
                    stack.push(Frame::Enter(raw[at as usize].true_at));
                }
                Frame::AfterTrue { at, pos } => {
                    nodes[pos as usize].index = ret;
                    in_progress[at as usize] = false;
                    ret = pos;
                }
            }
        }
        roots.push(ret);
        start = end;
    }
    drop(raw);
    drop(in_progress);

    if !placed.is_empty()
        && placed
            .iter()
            .zip(&leaf_weights)
            .any(|(&p, &count)| p == UNPLACED && count > 0)
    {
        // ONNX Runtime would hang these on whatever node it placed first.
        return Err(unsupported(node, "weights on a leaf no root reaches"));
    }
    // A leaf without weights keeps its `nodes_values` entry as its value and has no
    // entries, as in ONNX Runtime.
    nodes.shrink_to_fit();
    Ok((nodes, roots, weights))
}
