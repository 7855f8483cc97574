use serde_json::json;

use super::*;
use crate::tensor::{DataType, TensorData};

fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype,
        shape: shape.to_vec(),
    }
}

/// One FP32 input of three columns, any number of rows.
fn three_columns() -> Vec<TensorSpec> {
    vec![spec("features", DataType::Fp32, &[-1, 3])]
}

fn parse(body: Value) -> Result<Request, ScorerError> {
    parse_request(body.to_string().as_bytes())
}

/// The validated input an Azure ML body becomes for `specs`.
fn converted(body: Value, specs: &[TensorSpec]) -> Result<NamedTensor, String> {
    let (request, answer) = parse(body)
        .and_then(|r| r.for_model(specs))
        .map_err(|e| e.to_string())?;
    assert_eq!(answer, Answer::AzureMl);
    let mut inputs =
        oip::validate_inputs(request.inputs, specs, 1 << 20).map_err(|e| e.to_string())?;
    assert_eq!(inputs.len(), 1);
    Ok(inputs.remove(0))
}

fn error(body: Value, specs: &[TensorSpec]) -> String {
    match converted(body, specs) {
        Ok(tensor) => panic!("accepted: {tensor:?}"),
        Err(message) => message,
    }
}

#[test]
fn each_azure_ml_body_form_becomes_the_models_only_input() {
    let rows = json!([[1.0, 2.0, 3.0], [4.0, 5.0, 6.5]]);
    let bodies = [
        json!({"input_data": {"columns": ["a", "b", "c"], "index": [0, 1], "data": rows}}),
        json!({"input_data": {"data": rows}}),
        json!({"input_data": rows}),
        json!({"data": rows}),
    ];
    for body in bodies {
        let tensor = converted(body.clone(), &three_columns()).unwrap();
        assert_eq!(tensor.name, "features", "{body}");
        assert_eq!(tensor.shape, vec![2, 3], "{body}");
        assert_eq!(
            tensor.data,
            TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]),
            "{body}"
        );
    }
}

#[test]
fn the_input_takes_the_models_datatype() {
    let specs = [spec("x", DataType::Int64, &[-1, 2])];
    let tensor = converted(json!({"data": [[1, 2], [3, 4]]}), &specs).unwrap();
    assert_eq!(tensor.data, TensorData::Int64(vec![1, 2, 3, 4]));
    let specs = [spec("x", DataType::Fp64, &[-1, 2])];
    let tensor = converted(json!({"input_data": [[1, 2.5]]}), &specs).unwrap();
    assert_eq!(tensor.data, TensorData::Fp64(vec![1.0, 2.5]));
}

#[test]
fn an_oip_body_is_parsed_as_before_and_answered_in_oip() {
    let body = json!({"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32",
                                   "data": [1, 2, 3]}]});
    let (request, answer) = parse(body).unwrap().for_model(&three_columns()).unwrap();
    assert_eq!(answer, Answer::Oip);
    assert_eq!(request.inputs[0].name, "features");
    // A broken OIP body keeps the OIP parser's error, even with a `data` key inside.
    let message = parse(json!({"inputs": 3, "data": [[1]]}))
        .unwrap_err()
        .to_string();
    assert!(message.contains("malformed inference request"), "{message}");
    let message = parse(json!({"something": 1})).unwrap_err().to_string();
    assert!(message.contains("malformed inference request"), "{message}");
}

#[test]
fn a_column_count_the_model_does_not_take_is_refused() {
    let message = error(json!({"data": [[1.0, 2.0]]}), &three_columns());
    assert!(
        message.contains("the rows have 2 values") && message.contains("takes 3 columns"),
        "{message}"
    );
    let message = error(
        json!({"input_data": {"columns": ["a", "b"], "data": [[1.0, 2.0, 3.0]]}}),
        &three_columns(),
    );
    assert!(message.contains("names 2 columns"), "{message}");
    let message = error(
        json!({"input_data": {"index": [0], "data": [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]}}),
        &three_columns(),
    );
    assert!(
        message.contains("`input_data.index` has 1 entries"),
        "{message}"
    );
}

#[test]
fn ragged_rows_are_refused() {
    let message = error(
        json!({"input_data": [[1.0, 2.0, 3.0], [1.0, 2.0]]}),
        &three_columns(),
    );
    assert!(
        message.contains("row 1 has 2 values but row 0 has 3"),
        "{message}"
    );
    let message = error(json!({"data": [[1.0, 2.0, 3.0], 4.0]}), &three_columns());
    assert!(message.contains("row 1 is not a list"), "{message}");
}

#[test]
fn non_numeric_values_are_refused() {
    for bad in [json!(null), json!([1.0]), json!({"a": 1})] {
        let message = error(json!({"data": [[1.0, bad, 3.0]]}), &three_columns());
        assert!(
            message.contains("row 0, column 1") && message.contains("not a number"),
            "{message}"
        );
    }
    // A string is a value (of a BYTES input); for a numeric input it is refused by the
    // input's own datatype check, naming the element.
    let message = error(json!({"data": [[1.0, "abc", 3.0]]}), &three_columns());
    assert!(
        message.contains("element 1 is the string \"abc\" but the datatype is FP32"),
        "{message}"
    );
}

#[test]
fn empty_bodies_are_refused() {
    let cases = [
        (json!({"data": []}), "has no rows"),
        (json!({"input_data": [[]]}), "rows have no values"),
        (json!({"input_data": {"data": []}}), "has no rows"),
        (json!({"data": [1.0, 2.0, 3.0]}), "must be a list of rows"),
        (json!({"data": "1,2,3"}), "must be a list of rows"),
        (
            json!({"input_data": [[1.0, 2.0, 3.0]], "data": [[1.0, 2.0, 3.0]]}),
            "not both",
        ),
        (
            json!({"input_data": {"tokens": [[1]], "mask": [[1]]}}),
            "named tensors",
        ),
    ];
    for (body, want) in cases {
        let message = error(body.clone(), &three_columns());
        assert!(message.contains(want), "{body}: {message}");
    }
}

#[test]
fn a_model_with_several_inputs_is_refused_with_the_reason() {
    let specs = [
        spec("numeric", DataType::Fp32, &[-1, 4]),
        spec("flags", DataType::Bool, &[-1, 2]),
    ];
    let message = error(json!({"data": [[1.0, 2.0, 3.0, 4.0]]}), &specs);
    assert!(
        message.contains("this model has 2 inputs") && message.contains("OIP body"),
        "{message}"
    );
    let specs = [spec("image", DataType::Fp32, &[-1, 3, 8, 8])];
    let message = error(json!({"data": [[1.0, 2.0, 3.0]]}), &specs);
    assert!(message.contains("not [rows, columns]"), "{message}");
}

#[test]
fn the_answer_is_one_prediction_per_row() {
    let output = |name: &str, shape: &[i64], data: TensorData| NamedTensor {
        name: name.into(),
        datatype: data.datatype(),
        shape: shape.to_vec(),
        data,
    };
    let column = output("variable", &[3, 1], TensorData::Fp32(vec![1.5, 2.5, 3.5]));
    assert_eq!(answer(&[column]), json!([1.5, 2.5, 3.5]));
    let labels = output("label", &[2], TensorData::Int64(vec![0, 1]));
    let probabilities = output(
        "probabilities",
        &[2, 2],
        TensorData::Fp32(vec![0.75, 0.25, 0.5, 0.5]),
    );
    assert_eq!(
        answer(std::slice::from_ref(&probabilities)),
        json!([[0.75, 0.25], [0.5, 0.5]])
    );
    assert_eq!(
        answer(&[labels, probabilities]),
        json!({"label": [0, 1], "probabilities": [[0.75, 0.25], [0.5, 0.5]]})
    );
}
