//! The general path: any node order, any ids, shared children, any column form. Decodes
//! each node column into one record per node (`Raw`), resolves children through a
//! (tree id, node id) index, and hands the records and the weight columns to `layout`.
//! Every malformed model is refused here with the reason.

use super::ensemble::{MAX_FEATURE, MISSING_TRUE, Mode, Num, WORD_BITS};
use super::index::NodeIndex;
use super::layout::{Raw, layout};
use super::weights::{Decoded, WeightColumns};
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
    let mut records = Records::<T>::new(node, n);
    records.modes(attrs)?;
    records.missing(attrs)?;
    let max_feature = records.features(attrs)?;
    records.values(attrs)?;
    let index = NodeIndex::new(node, &tree_ids, &node_ids)?;
    records.children(attrs, &index, &tree_ids, &node_ids)?;
    let weights = WeightColumns::read(node, attrs, classifier, n_outputs)?;
    let track = attrs.has("nodes_hitrates");
    let (nodes, roots, weights, placed) = layout(
        node,
        &tree_ids,
        &node_ids,
        &index,
        records.raw,
        &weights,
        n_outputs,
        track,
    )?;
    let mut decoded = weights.decoded(nodes, roots, max_feature);
    // The file's order kept for every tree: covers need no moving.
    decoded.placed = placed.filter(|p| !p.iter().enumerate().all(|(k, &at)| at as usize == k));
    Ok(decoded)
}

/// One record per node, filled column by column straight from the wire: no node column is
/// ever held whole (a 30 MB forest has about 750,000 nodes).
struct Records<'n, 'a, T> {
    node: &'n NodeView<'a>,
    raw: Vec<Raw<T>>,
}

impl<'n, 'a, T: Num> Records<'n, 'a, T> {
    /// `n` empty records.
    fn new(node: &'n NodeView<'a>, n: usize) -> Self {
        let raw = crate::memory::vec_filled(
            Raw {
                value: T::default(),
                true_at: 0,
                false_at: 0,
                word: 0,
            },
            n,
        );
        Records { node, raw }
    }

    /// Checks that the column `name` held an entry for every node (`got` is its count,
    /// `None` when it is absent).
    fn count(&self, name: &str, got: Option<usize>) -> Result<(), CompileError> {
        let n = self.raw.len();
        match got {
            Some(got) if got == n => Ok(()),
            Some(got) => Err(invalid(
                self.node,
                format!("{name} has {got} entries for {n} nodes"),
            )),
            None => Err(invalid(self.node, format!("{name} is missing"))),
        }
    }

    /// Each node's mode, on top of its word.
    fn modes(&mut self, attrs: &Attrs<'_, '_>) -> Result<(), CompileError> {
        let (node, raw) = (self.node, &mut self.raw);
        let got = attrs.each_bytes("nodes_modes", |k, m| {
            let mode = Mode::parse(m).ok_or_else(|| {
                invalid(
                    node,
                    format!("unknown node mode {}", String::from_utf8_lossy(m)),
                )
            })?;
            raw.get_mut(k).ok_or_else(|| overflow(node))?.word = u32::from(mode as u8) << WORD_BITS;
            Ok(())
        })?;
        self.count("nodes_modes", got)
    }

    /// The missing-tracks-true flags (optional; only the value 1 sets the flag in ONNX
    /// Runtime).
    fn missing(&mut self, attrs: &Attrs<'_, '_>) -> Result<(), CompileError> {
        let (node, raw) = (self.node, &mut self.raw);
        let got = attrs.each_int("nodes_missing_value_tracks_true", |k, v| {
            let r = raw.get_mut(k).ok_or_else(|| overflow(node))?;
            if v == 1 {
                r.word |= u32::from(MISSING_TRUE) << WORD_BITS;
            }
            Ok(())
        })?;
        if got.is_some() {
            self.count("nodes_missing_value_tracks_true", got)?;
        }
        Ok(())
    }

    /// Each split's feature, in its word; returns the largest feature id read (leaves'
    /// ids count toward it too, as in ONNX Runtime).
    fn features(&mut self, attrs: &Attrs<'_, '_>) -> Result<u32, CompileError> {
        let (node, raw) = (self.node, &mut self.raw);
        let mut max_feature = 0u32;
        let got = attrs.each_int("nodes_featureids", |k, v| {
            let r = raw.get_mut(k).ok_or_else(|| overflow(node))?;
            let feature = v as i64;
            if r.is_leaf() {
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
        self.count("nodes_featureids", got)?;
        Ok(max_feature)
    }

    /// Each node's threshold (a leaf's value), from the tensor form or the float list.
    fn values(&mut self, attrs: &Attrs<'_, '_>) -> Result<(), CompileError> {
        let node = self.node;
        match attrs.tensor_f64("nodes_values_as_tensor", T::BYTES == 8)? {
            Some(values) => {
                if attrs.has("nodes_values") {
                    return Err(invalid(
                        node,
                        "both nodes_values and nodes_values_as_tensor are given",
                    ));
                }
                self.count("nodes_values_as_tensor", Some(values.len()))?;
                for (r, v) in self.raw.iter_mut().zip(values) {
                    r.value = T::from_f64(v);
                }
            }
            None => {
                let raw = &mut self.raw;
                let got = attrs.each_float("nodes_values", |k, v| {
                    raw.get_mut(k).ok_or_else(|| overflow(node))?.value = T::from_f32(v);
                    Ok(())
                })?;
                self.count("nodes_values", got)?;
            }
        }
        Ok(())
    }

    /// Each split's children, as attribute positions found through `index` (leaves' ids
    /// are ignored, as in ONNX Runtime).
    fn children(
        &mut self,
        attrs: &Attrs<'_, '_>,
        index: &NodeIndex,
        tree_ids: &[i64],
        node_ids: &[i64],
    ) -> Result<(), CompileError> {
        let node = self.node;
        for (name, is_true) in [("nodes_truenodeids", true), ("nodes_falsenodeids", false)] {
            let raw = &mut self.raw;
            let got = attrs.each_int(name, |k, v| {
                let r = raw.get(k).ok_or_else(|| overflow(node))?;
                if r.is_leaf() {
                    return Ok(());
                }
                let id = v as i64;
                let at = index.child(tree_ids, node_ids, k, id).ok_or_else(|| {
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
            self.count(name, got)?;
        }
        Ok(())
    }
}

/// A node column holds more entries than `nodes_nodeids`.
fn overflow(node: &NodeView<'_>) -> CompileError {
    invalid(node, "a node column is longer than nodes_nodeids")
}
