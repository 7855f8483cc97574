//! What a model declares in its `metadata_props` (`manymodels.columns`,
//! `manymodels.forecast`: `manymodels_contract::forecast`), read at load by either engine
//! and checked against the model's input. A malformed declaration refuses the model, as a
//! malformed file does (422).

use manymodels_contract::forecast::{COLUMNS_KEY, Declaration, FORECAST_KEY};

use crate::tensor::{DataType, TensorSpec};

/// The declaration from `prop(key)` (the value of a `metadata_props` key, if present),
/// checked against `inputs`: a model that declares anything has one FP32 input
/// `[rows, features]`, and the declaration's width is its `features` when the file fixes
/// it.
pub fn read(
    prop: impl Fn(&str) -> Option<String>,
    inputs: &[TensorSpec],
) -> Result<Declaration, String> {
    let (columns, forecast) = (prop(COLUMNS_KEY), prop(FORECAST_KEY));
    if columns.is_none() && forecast.is_none() {
        return Ok(Declaration::default());
    }
    let width = match inputs {
        [input] if input.datatype == DataType::Fp32 && input.shape.len() == 2 => {
            usize::try_from(input.shape[1]).ok().filter(|&w| w > 0)
        }
        _ => {
            return Err(format!(
                "invalid model declaration: {COLUMNS_KEY} and {FORECAST_KEY} need one FP32 input [rows, features]"
            ));
        }
    };
    Declaration::from_metadata(columns.as_deref(), forecast.as_deref(), width)
        .map_err(|e| format!("invalid model declaration: {e}"))
}

/// The declaration of an ONNX file, read with the native engine's protobuf reader (only
/// the model's own fields are scanned, not its graph).
pub fn of_file(bytes: &[u8], inputs: &[TensorSpec]) -> Result<Declaration, String> {
    let props = manymodels_native::onnx::metadata_props(bytes)
        .map_err(|e| format!("invalid model: {e}"))?;
    read(
        |key| {
            props
                .iter()
                .rev()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        },
        inputs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(datatype: DataType, shape: &[i64]) -> Vec<TensorSpec> {
        vec![TensorSpec {
            name: "input".into(),
            datatype,
            shape: shape.to_vec(),
        }]
    }

    #[test]
    fn a_declaration_is_checked_against_the_input() {
        let props = |key: &str| (key == COLUMNS_KEY).then(|| r#"["a", "b"]"#.to_string());
        let declaration = read(props, &input(DataType::Fp32, &[-1, 2])).unwrap();
        assert_eq!(declaration.columns.unwrap(), ["a", "b"]);
        let err = read(props, &input(DataType::Fp32, &[-1, 3])).unwrap_err();
        assert!(
            err.contains(
                "invalid model declaration: manymodels.columns: names 2 columns, the input has 3"
            ),
            "{err}"
        );
        for bad in [input(DataType::Fp64, &[-1, 2]), input(DataType::Fp32, &[2])] {
            let err = read(props, &bad).unwrap_err();
            assert!(err.contains("one FP32 input"), "{err}");
        }
        // Nothing declared: any input will do.
        assert!(
            read(|_| None, &input(DataType::Int64, &[3]))
                .unwrap()
                .is_empty()
        );
    }
}
