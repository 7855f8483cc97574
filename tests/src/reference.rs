//! What to send and what to expect: the demo models' reference inputs and outputs
//! (computed by Python onnxruntime, `models/demo/reference.json`), request bodies, and
//! output comparison with a tolerance.

use serde_json::{Value, json};

use crate::store::demo_store;

/// The tolerance outputs are compared with: relative to the magnitude, absolute below 1.
pub const TOLERANCE: f64 = 1e-5;

/// One row of ten features, for the demo model `linear-small`.
pub const LINEAR_SMALL_ROW: [f32; 10] = [0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8, 0.9, -1.0];

/// The `models` array of `models/demo/reference.json`: per model its `id`, `inputs` and
/// `outputs`.
pub fn demo_reference() -> Vec<Value> {
    let path = demo_store().join("reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let value: Value = serde_json::from_str(&text).expect("reference.json is JSON");
    value["models"]
        .as_array()
        .expect("reference.json has a models array")
        .clone()
}

/// The reference entry of demo model `id`.
pub fn reference(id: &str) -> Value {
    demo_reference()
        .into_iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("{id} is not a demo model"))
}

/// The ids of the demo models, sorted.
pub fn demo_ids() -> Vec<String> {
    let mut ids: Vec<String> = demo_reference()
        .iter()
        .map(|m| m["id"].as_str().expect("id is a string").to_string())
        .collect();
    ids.sort();
    ids
}

/// The infer request body for one reference entry, with the request id `ref`.
pub fn infer_body(reference: &Value) -> Value {
    json!({ "id": "ref", "inputs": reference["inputs"] })
}

/// The infer request body for one reference entry, without a request id.
pub fn inputs_body(reference: &Value) -> Value {
    json!({ "inputs": reference["inputs"] })
}

/// The first row of a reference entry's inputs, as an infer request body.
pub fn one_row_body(reference: &Value) -> Value {
    let inputs: Vec<Value> = reference["inputs"]
        .as_array()
        .expect("reference inputs")
        .iter()
        .map(|input| {
            let shape = input["shape"].as_array().expect("input shape");
            let rows = shape[0].as_u64().expect("a row count") as usize;
            let data = input["data"].as_array().expect("input data");
            let per_row = data.len() / rows;
            let mut one = shape.clone();
            one[0] = 1.into();
            json!({
                "name": input["name"], "datatype": input["datatype"], "shape": one,
                "data": data[..per_row].to_vec(),
            })
        })
        .collect();
    json!({ "inputs": inputs })
}

/// `rows` rows of `features` deterministic values in [-2, 2) for a generated model.
pub fn generated_rows(features: usize, rows: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..rows)
        .map(|_| {
            (0..features)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
                })
                .collect()
        })
        .collect()
}

/// An infer request body of `rows` for a model with one FP32 input named `input` (every
/// generated model, and the linear demo models).
pub fn rows_body(rows: &[Vec<f32>]) -> Value {
    let features = rows[0].len();
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    json!({ "inputs": [{ "name": "input", "shape": [rows.len(), features], "datatype": "FP32", "data": data }] })
}

/// The same for one row of `features` copies of `value`.
pub fn constant_row_body(features: usize, value: f32) -> Value {
    rows_body(&[vec![value; features]])
}

/// Whether `got` is within `tolerance` of `want` (relative to its magnitude, absolute
/// below 1).
pub fn close(got: f64, want: f64, tolerance: f64) -> bool {
    (got - want).abs() <= tolerance * want.abs().max(1.0)
}

/// Asserts that the first output of an infer response holds `want` (what a generated
/// model's own evaluator predicts), within `tolerance`.
pub fn assert_predictions(context: &str, response: &Value, want: &[f32], tolerance: f64) {
    let got = response["outputs"][0]["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{context}: no output data in {response}"));
    assert!(got.len() >= want.len(), "{context}: {response}");
    for (value, want) in got.iter().zip(want) {
        let (value, want) = (value.as_f64().expect("a number"), f64::from(*want));
        assert!(
            close(value, want, tolerance),
            "{context}: {value} vs {want}"
        );
    }
}

/// Asserts that an infer response carries the reference entry's outputs, within
/// `tolerance`.
pub fn assert_outputs_match(response: &Value, reference: &Value, tolerance: f64) {
    let id = reference["id"].as_str().expect("reference id");
    let expected = reference["outputs"].as_array().expect("reference outputs");
    assert_outputs_equal(id, &response["outputs"], expected, tolerance);
}

/// Asserts that `outputs` (of a response) are `expected` (reference entries) in order,
/// name, datatype, shape and data: numbers within `tolerance`, booleans and strings
/// exactly.
pub fn assert_outputs_equal(context: &str, outputs: &Value, expected: &[Value], tolerance: f64) {
    let outputs = outputs
        .as_array()
        .unwrap_or_else(|| panic!("{context}: outputs is not an array: {outputs}"));
    let names =
        |list: &[Value]| -> Vec<String> { list.iter().map(|o| o["name"].to_string()).collect() };
    assert_eq!(names(outputs), names(expected), "{context}: output names");
    for (output, reference) in outputs.iter().zip(expected) {
        let context = format!("{context}/{}", reference["name"]);
        assert_eq!(
            output["datatype"], reference["datatype"],
            "{context}: datatype"
        );
        assert_eq!(output["shape"], reference["shape"], "{context}: shape");
        let got = output["data"]
            .as_array()
            .unwrap_or_else(|| panic!("{context}: data is not an array"));
        let want = reference["data"].as_array().expect("reference data");
        assert_eq!(got.len(), want.len(), "{context}: number of data values");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            match (g, w) {
                (Value::Number(g), Value::Number(w)) => {
                    let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
                    assert!(close(g, w, tolerance), "{context}[{i}]: got {g}, want {w}");
                }
                _ => assert_eq!(g, w, "{context}[{i}]"),
            }
        }
    }
}
