//! Laying decoded trees out as `Trees` keeps them: each tree in the file's order where that
//! already is a layout, else ONNX Runtime's depth-first relayout; leaf weights attached.

use super::ensemble::{MODE_MASK, Mode, Node, Num, TRUE_NEXT, WORD_BITS, Weight};
use super::index::NodeIndex;
use super::weights::{LeafWeights, WeightColumns};
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
    let mut pending: Vec<u32> = Vec::new();
    let mut i = start;
    loop {
        let r = &raw[i];
        if r.is_leaf() {
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

impl<T> Raw<T> {
    #[inline(always)]
    pub(super) fn is_leaf(&self) -> bool {
        (self.word >> WORD_BITS) as u8 & MODE_MASK == Mode::Leaf as u8
    }
}

/// Laid-out nodes, the trees' roots, the leaf weights and (when asked) where each record
/// went, by attribute position (`UNPLACED` for none).
pub(super) type Laid<T> = (Vec<Node<T>>, Vec<u32>, LeafWeights<T>, Option<Vec<u32>>);

/// Lays the trees out: in the file's order where it already is a layout
/// (`keep_in_order`), else the depth-first relayout (false child next) ONNX Runtime's
/// `AddNodes` makes, without recursion (a hostile tree can be a million nodes deep).
/// `track`: also say where each record went (hit rates follow their nodes).
#[allow(
    clippy::too_many_arguments,
    reason = "the layout's inputs, each read once"
)]
pub(super) fn layout<T: Num>(
    node: &NodeView<'_>,
    tree_ids: &[i64],
    node_ids: &[i64],
    index: &NodeIndex,
    mut raw: Vec<Raw<T>>,
    columns: &WeightColumns<T>,
    n_outputs: usize,
    track: bool,
) -> Result<Laid<T>, CompileError> {
    let n = raw.len();
    let mut kept: Vec<(usize, usize, u32)> = Vec::new();
    let (weights, weighted) = attach_weights(node, index, &mut raw, columns, n_outputs)?;
    let mut nodes: Vec<Node<T>> = crate::memory::vec_with_capacity(n);
    let mut roots = Vec::new();
    let mut relayout = Relayout::default();
    let mut start = 0;
    while start < n {
        let mut end = start + 1;
        while end < n && tree_ids[end] == tree_ids[start] {
            end += 1;
        }
        let root = if keep_in_order(&raw, start, end) {
            let base = copy_in_order(&raw, start, end, &mut nodes);
            if track {
                kept.push((start, end, base));
            }
            base
        } else {
            relayout.tree(node, tree_ids, node_ids, &raw, start, &mut nodes)?
        };
        roots.push(root);
        start = end;
    }
    drop(raw);
    let placed = track.then(|| relayout.placed_with(n, &kept));
    if relayout.left_out_any(&weighted) {
        // ONNX Runtime would hang these on whatever node it placed first.
        return Err(unsupported(node, "weights on a leaf no root reaches"));
    }
    // A leaf without weights keeps its `nodes_values` entry as its value and has no
    // entries, as in ONNX Runtime.
    nodes.shrink_to_fit();
    Ok((nodes, roots, weights, placed))
}

/// Attaches the leaf weights to their records, in (tree, node, attribute position) order,
/// as ONNX Runtime sorts them (exporters usually list them in that order already, which is
/// attribute order too: the records are then filled front to back). A leaf's record keeps
/// its first weight as its value, the count in its word and where its weights start in
/// `true_at`. Returns the weights and, by attribute position, whether a leaf there took
/// any (to find weights on unreachable leaves).
fn attach_weights<T: Num>(
    node: &NodeView<'_>,
    index: &NodeIndex,
    raw: &mut [Raw<T>],
    columns: &WeightColumns<T>,
    n_outputs: usize,
) -> Result<(LeafWeights<T>, Vec<u8>), CompileError> {
    let WeightColumns {
        trees: w_trees,
        nodes: w_nodes,
        ids: w_ids,
        values: w_values,
    } = columns;
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
    let mut weighted: Vec<u8> = vec![0; raw.len()];
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
            weighted[at] = 1;
        }
    }
    Ok((weights, weighted))
}

/// Copies the records `start..end` of a tree whose file order already is a layout (every
/// split has one child right after it) as they are; returns its root. Record `start + k`
/// goes to position `base + k`.
fn copy_in_order<T: Num>(
    raw: &[Raw<T>],
    start: usize,
    end: usize,
    nodes: &mut Vec<Node<T>>,
) -> u32 {
    let base = nodes.len() as u32;
    let first = start as u32;
    for (i, r) in raw[start..end].iter().enumerate() {
        let i = start + i;
        let node = if r.is_leaf() {
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
    base
}

const UNPLACED: u32 = u32::MAX;

/// A step of the relayout's walk (an explicit stack: no recursion).
enum Frame {
    Enter(u32),
    AfterFalse { at: u32, pos: u32 },
    AfterTrue { at: u32, pos: u32 },
}

/// ONNX Runtime's own depth-first relayout, false child next, for trees whose file order
/// is not a layout (shared true children, trees split over several runs, children listed
/// before parents); it also finds what ONNX Runtime would refuse. Its arrays are made
/// when the first such tree comes, and kept for the next.
#[derive(Default)]
struct Relayout {
    /// Where each record went (`UNPLACED` if nowhere yet), by attribute position.
    placed: Vec<u32>,
    /// The splits whose subtrees are being laid out: reaching one again is a cycle.
    in_progress: Vec<bool>,
    stack: Vec<Frame>,
}

impl Relayout {
    /// Lays out the tree whose root is the record at `start`, appending its nodes;
    /// returns its root.
    fn tree<T: Num>(
        &mut self,
        node: &NodeView<'_>,
        tree_ids: &[i64],
        node_ids: &[i64],
        raw: &[Raw<T>],
        start: usize,
        nodes: &mut Vec<Node<T>>,
    ) -> Result<u32, CompileError> {
        if self.placed.is_empty() {
            self.placed = vec![UNPLACED; raw.len()];
            self.in_progress = vec![false; raw.len()];
        }
        let Relayout {
            placed,
            in_progress,
            stack,
        } = self;
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
                    if r.is_leaf() {
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
        Ok(ret)
    }

    /// Where each of the `n` records went: the relaid trees' places, and record `start + k`
    /// of a tree kept in order (`kept`: start, end, base) at `base + k`.
    fn placed_with(&self, n: usize, kept: &[(usize, usize, u32)]) -> Vec<u32> {
        let mut placed = if self.placed.is_empty() {
            vec![UNPLACED; n]
        } else {
            self.placed.clone()
        };
        for &(start, end, base) in kept {
            for (k, p) in placed[start..end].iter_mut().enumerate() {
                *p = base + k as u32;
            }
        }
        placed
    }

    /// Once any tree was relaid: whether a record that took weights (`weighted`, by
    /// attribute position) was never placed. Only the relayout marks records placed, so a
    /// weighted leaf of a tree kept in order counts as unplaced too, and such a model is
    /// refused (served by ONNX Runtime).
    fn left_out_any(self, weighted: &[u8]) -> bool {
        let Relayout { placed, .. } = self;
        !placed.is_empty()
            && placed
                .iter()
                .zip(weighted)
                .any(|(&p, &count)| p == UNPLACED && count > 0)
    }
}
