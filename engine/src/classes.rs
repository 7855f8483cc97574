//! The class labels of ZipMap outputs, read from the model file once at load.
//!
//! A ZipMap output (skl2onnx's default for a classifier's probabilities: a sequence of
//! maps, class label to probability) is served by both engines as an FP32 tensor
//! `[rows, classes]` whose columns are the labels in ascending order: numbers by value,
//! strings by bytes, the order ONNX Runtime's maps iterate in. The labels themselves are
//! the ZipMap node's `classlabels_int64s` or `classlabels_strings`, sorted the same way;
//! model metadata lists them so a client can name the columns.

use serde::{Deserialize, Serialize};

use crate::tensor::TensorSpec;

/// The class labels of one ZipMap output, in column order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Classes {
    Int64(Vec<i64>),
    Strings(Vec<String>),
}

/// For each declared output, its classes when a ZipMap node writes it directly. A file
/// the reader cannot parse (only possible with the native engine off: otherwise it was
/// refused before) or a ZipMap without a readable label list gives `None`: the output is
/// still served, its columns just go unnamed in the metadata.
pub fn of_zipmaps(bytes: &[u8], outputs: &[TensorSpec]) -> Vec<Option<Classes>> {
    let Ok(model) = manymodels_native::onnx::parse(bytes) else {
        return vec![None; outputs.len()];
    };
    outputs
        .iter()
        .map(|output| {
            let node = model.graph.nodes.iter().find(|n| {
                n.op_type == "ZipMap"
                    && n.domain == "ai.onnx.ml"
                    && n.outputs.first() == Some(&output.name.as_str())
            })?;
            let ints = node.attr("classlabels_int64s").map(|a| &a.ints);
            let strings = node.attr("classlabels_strings").map(|a| &a.strings);
            match (ints, strings) {
                (Some(ints), _) if !ints.is_empty() => {
                    let mut labels = ints.varints(|v| Ok(v as i64)).ok()?;
                    labels.sort_unstable();
                    Some(Classes::Int64(labels))
                }
                (_, Some(strings)) if !strings.is_empty() => {
                    let mut labels = strings
                        .map_bytes(|b| Ok(String::from_utf8_lossy(b).into_owned()))
                        .ok()?;
                    // `String`'s order is its bytes' order.
                    labels.sort_unstable();
                    Some(Classes::Strings(labels))
                }
                _ => None,
            }
        })
        .collect()
}
