//! The ZipMap classifiers: skl2onnx exports with the default ZipMap on
//! (`models/classifiers`, made by `models/make_classifiers.py`), a store of their own, with
//! reference outputs from Python onnxruntime converted to the form the scorer serves: the
//! ZipMap output as an FP32 `[rows, classes]` tensor, its `classes` listed in column order.
//! One of them, `zipmap-onehot-str-input`, takes a string column: its reference inputs are
//! BYTES (JSON strings), so every check here runs string inputs too.

use std::path::PathBuf;

use serde_json::Value;

use crate::reference::assert_outputs_equal;
use crate::store::root;

/// How close a probability must be to Python onnxruntime's (labels must be equal).
pub const PROBABILITY_TOLERANCE: f64 = 1e-6;

/// The committed store of ZipMap classifiers.
pub fn classifier_store() -> PathBuf {
    root().join("models/classifiers")
}

/// The `models` array of `models/classifiers/reference.json`.
pub fn classifier_reference() -> Vec<Value> {
    let path = classifier_store().join("reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let value: Value = serde_json::from_str(&text).expect("reference.json is JSON");
    value["models"].as_array().expect("a models array").clone()
}

/// Asserts an infer response's outputs are the reference's: names, datatypes and shapes,
/// labels exactly, probabilities within [`PROBABILITY_TOLERANCE`].
pub fn assert_classified(response: &Value, reference: &Value) {
    let id = reference["id"].as_str().expect("reference id");
    let expected = reference["outputs"].as_array().expect("reference outputs");
    assert_outputs_equal(id, &response["outputs"], expected, PROBABILITY_TOLERANCE);
}

/// Asserts model metadata lists, on each ZipMap output, the reference's classes in column
/// order (`parameters.classes`), and nothing on the label output.
pub fn assert_classes_in_metadata(metadata: &Value, reference: &Value) {
    let id = reference["id"].as_str().expect("reference id");
    let outputs = metadata["outputs"]
        .as_array()
        .unwrap_or_else(|| panic!("{id}: {metadata}"));
    for expected in reference["outputs"].as_array().expect("reference outputs") {
        let output = outputs
            .iter()
            .find(|o| o["name"] == expected["name"])
            .unwrap_or_else(|| panic!("{id}: no output {} in {metadata}", expected["name"]));
        match expected.get("classes") {
            Some(classes) => {
                assert_eq!(output["datatype"], "FP32", "{id}: {metadata}");
                assert_eq!(
                    output["parameters"]["classes"], *classes,
                    "{id}: {metadata}"
                );
            }
            None => assert!(output.get("parameters").is_none(), "{id}: {metadata}"),
        }
    }
}
