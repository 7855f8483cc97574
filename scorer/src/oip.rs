//! Open Inference Protocol (KServe v2) JSON bodies, and the checks that turn a request's
//! inputs into tensors a model accepts. The binary tensor extension's framing is in
//! `binary`.

pub mod binary;

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::ScorerError;
use crate::tensor::{DataType, NamedTensor, TensorData, TensorSpec};

/// `POST /v2/models/{id}/infer` body.
#[derive(Debug, Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    pub inputs: Vec<RequestInput>,
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
    #[serde(default)]
    pub parameters: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct RequestInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Option<serde_json::Value>,
    /// JSON `data`; absent (empty) when the input comes as binary data (`binary::Blobs`).
    #[serde(default)]
    pub data: RawData,
}

#[derive(Debug, Deserialize)]
pub struct RequestOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<serde_json::Value>,
}

/// The inference response.
#[derive(Debug, Serialize)]
pub struct InferResponse<'a> {
    pub model_name: &'a str,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<NamedTensor>,
}

/// One JSON scalar of tensor data, before the datatype is applied.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    Float(f64),
    Int(i64),
    Bool(bool),
}

/// Tensor data as sent: a flat array, or nested arrays in row-major order, flattened.
/// The datatype is applied later because JSON does not promise `datatype` comes first.
#[derive(Debug, Default)]
pub struct RawData(pub Vec<Scalar>);

impl<'de> Deserialize<'de> for RawData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Flatten<'a>(&'a mut Vec<Scalar>);

        impl<'de> de::DeserializeSeed<'de> for Flatten<'_> {
            type Value = ();
            fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
                deserializer.deserialize_any(self)
            }
        }

        impl<'de> Visitor<'de> for Flatten<'_> {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of numbers or booleans")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                if let Some(hint) = seq.size_hint() {
                    self.0.reserve(hint);
                }
                while seq.next_element_seed(Flatten(self.0))?.is_some() {}
                Ok(())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
                self.0.push(Scalar::Float(v));
                Ok(())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
                self.0.push(Scalar::Int(v));
                Ok(())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
                let v = i64::try_from(v).map_err(|_| E::custom("integer out of range"))?;
                self.0.push(Scalar::Int(v));
                Ok(())
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
                self.0.push(Scalar::Bool(v));
                Ok(())
            }
        }

        let mut out = Vec::new();
        deserializer.deserialize_any(Flatten(&mut out))?;
        Ok(RawData(out))
    }
}

/// Parses an infer body, mapping JSON errors to a 400 that says where the body is wrong.
pub fn parse_infer_request(body: &[u8]) -> Result<InferRequest, ScorerError> {
    serde_json::from_slice(body)
        .map_err(|e| ScorerError::invalid(format!("malformed inference request: {e}")))
}

/// Checks the request's inputs against the model's declared inputs and converts them to
/// typed tensors in the model's input order. `max_elements` bounds the whole request.
pub fn validate_inputs(
    inputs: Vec<RequestInput>,
    specs: &[TensorSpec],
    max_elements: usize,
) -> Result<Vec<NamedTensor>, ScorerError> {
    validate_inputs_with(inputs, Vec::new(), specs, max_elements)
}

/// `validate_inputs` for a request under the binary extension: `blobs[i]` is input `i`'s
/// binary data, if it has any (`binary::Blobs::inputs`).
pub fn validate_inputs_with(
    inputs: Vec<RequestInput>,
    blobs: Vec<Option<bytes::Bytes>>,
    specs: &[TensorSpec],
    max_elements: usize,
) -> Result<Vec<NamedTensor>, ScorerError> {
    let mut total = 0usize;
    for (i, input) in inputs.iter().enumerate() {
        if !specs.iter().any(|s| s.name == input.name) {
            let expected: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(ScorerError::invalid(format!(
                "unexpected input '{}': the model's inputs are {expected:?}",
                input.name
            )));
        }
        total = total.saturating_add(match blobs.get(i) {
            Some(Some(blob)) => binary::count(&input.datatype, blob),
            _ => input.data.0.len(),
        });
    }
    if total > max_elements {
        return Err(ScorerError::invalid(format!(
            "request has {total} tensor elements, more than the limit of {max_elements}"
        )));
    }
    let mut slots: Vec<Option<(RequestInput, Option<bytes::Bytes>)>> =
        specs.iter().map(|_| None).collect();
    let blobs = blobs.into_iter().chain(std::iter::repeat(None));
    for input in inputs.into_iter().zip(blobs) {
        let index = specs
            .iter()
            .position(|s| s.name == input.0.name)
            .expect("checked above");
        if slots[index].replace(input).is_some() {
            return Err(ScorerError::invalid(format!(
                "input '{}' is given more than once",
                specs[index].name
            )));
        }
    }
    specs
        .iter()
        .zip(slots)
        .map(|(spec, input)| match input {
            Some((input, blob)) => validate_input(input, blob, spec, max_elements),
            None => Err(ScorerError::invalid(format!(
                "missing input '{}'",
                spec.name
            ))),
        })
        .collect()
}

fn validate_input(
    input: RequestInput,
    blob: Option<bytes::Bytes>,
    spec: &TensorSpec,
    max_elements: usize,
) -> Result<NamedTensor, ScorerError> {
    let name = &input.name;
    let datatype = DataType::parse(&input.datatype).ok_or_else(|| {
        ScorerError::invalid(format!(
            "input '{name}' has unsupported datatype '{}' (supported: FP32, FP64, INT32, INT64, BOOL)",
            input.datatype
        ))
    })?;
    if datatype != spec.datatype {
        return Err(ScorerError::invalid(format!(
            "input '{name}' has datatype {} but the model expects {}",
            datatype.as_str(),
            spec.datatype.as_str()
        )));
    }
    if input.shape.len() != spec.shape.len() {
        return Err(ScorerError::invalid(format!(
            "input '{name}' has shape {:?} but the model expects rank {} ({:?}, -1 = any)",
            input.shape,
            spec.shape.len(),
            spec.shape
        )));
    }
    let mut elements: usize = 1;
    // The size with zero dimensions counted as one: `[huge, huge, 0]` holds no element
    // but must not pass as an empty tensor whose huge rows an engine would then allocate.
    let mut extent: usize = 1;
    for (given, expected) in input.shape.iter().zip(&spec.shape) {
        if *given < 0 || (*expected >= 0 && given != expected) {
            return Err(ScorerError::invalid(format!(
                "input '{name}' has shape {:?} but the model expects {:?} (-1 = any)",
                input.shape, spec.shape
            )));
        }
        elements = elements.saturating_mul(*given as usize);
        extent = extent.saturating_mul((*given as usize).max(1));
    }
    if extent > max_elements {
        return Err(ScorerError::invalid(format!(
            "input '{name}' has shape {:?}: {extent} elements, more than the limit of {max_elements}",
            input.shape
        )));
    }
    let data = match blob {
        Some(_) if !input.data.0.is_empty() => {
            return Err(ScorerError::invalid(format!(
                "input '{name}' has both data and binary_data_size"
            )));
        }
        Some(blob) => binary::decode(name, datatype, &blob, elements)?,
        None => {
            if elements != input.data.0.len() {
                return Err(ScorerError::invalid(
                    if input.data.0.is_empty() && binary::binary_data_size(&input)?.is_some() {
                        format!(
                            "input '{name}' has binary_data_size but the request has no \
                             Inference-Header-Content-Length header saying where its binary data starts"
                        )
                    } else {
                        format!(
                            "input '{name}' has shape {:?} ({elements} elements) but {} data values",
                            input.shape,
                            input.data.0.len()
                        )
                    },
                ));
            }
            convert(name, datatype, input.data.0)?
        }
    };
    Ok(NamedTensor {
        name: input.name,
        datatype,
        shape: input.shape,
        data,
    })
}

fn convert(name: &str, datatype: DataType, values: Vec<Scalar>) -> Result<TensorData, ScorerError> {
    let wrong = |i: usize, v: &Scalar| {
        ScorerError::invalid(format!(
            "input '{name}' element {i} is {} but the datatype is {}",
            match v {
                Scalar::Float(f) => format!("{f}"),
                Scalar::Int(n) => n.to_string(),
                Scalar::Bool(b) => b.to_string(),
            },
            datatype.as_str()
        ))
    };
    let ints = |values: &[Scalar]| -> Result<Vec<i64>, ScorerError> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| match *v {
                Scalar::Int(n) => Ok(n),
                Scalar::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
                _ => Err(wrong(i, v)),
            })
            .collect()
    };
    let floats = |values: &[Scalar]| -> Result<Vec<f64>, ScorerError> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| match *v {
                Scalar::Float(f) => Ok(f),
                Scalar::Int(n) => Ok(n as f64),
                Scalar::Bool(_) => Err(wrong(i, v)),
            })
            .collect()
    };
    Ok(match datatype {
        DataType::Fp32 => {
            TensorData::Fp32(floats(&values)?.into_iter().map(|f| f as f32).collect())
        }
        DataType::Fp64 => TensorData::Fp64(floats(&values)?),
        DataType::Int64 => TensorData::Int64(ints(&values)?),
        DataType::Int32 => TensorData::Int32(
            ints(&values)?
                .into_iter()
                .enumerate()
                .map(|(i, n)| {
                    i32::try_from(n).map_err(|_| {
                        ScorerError::invalid(format!(
                            "input '{name}' element {i} ({n}) does not fit INT32"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
        DataType::Bytes => {
            return Err(ScorerError::invalid(format!(
                "input '{name}': BYTES inputs are not served"
            )));
        }
        DataType::Bool => TensorData::Bool(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| match *v {
                    Scalar::Bool(b) => Ok(b),
                    Scalar::Int(0) => Ok(false),
                    Scalar::Int(1) => Ok(true),
                    _ => Err(wrong(i, v)),
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// Resolves the `outputs` selection to indices into the model's outputs, in request order.
pub fn select_outputs(
    requested: Option<&[RequestOutput]>,
    specs: &[TensorSpec],
) -> Result<Vec<usize>, ScorerError> {
    match requested {
        None => Ok((0..specs.len()).collect()),
        Some([]) => Ok((0..specs.len()).collect()),
        Some(requested) => requested
            .iter()
            .map(|r| {
                specs.iter().position(|s| s.name == r.name).ok_or_else(|| {
                    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                    ScorerError::invalid(format!(
                        "unknown output '{}': the model's outputs are {names:?}",
                        r.name
                    ))
                })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        }
    }

    fn request(json: &str) -> InferRequest {
        parse_infer_request(json.as_bytes()).unwrap()
    }

    #[test]
    fn nested_data_is_flattened_row_major() {
        let r = request(
            r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2.5],[3,4]]}]}"#,
        );
        assert_eq!(
            r.inputs[0].data.0,
            vec![
                Scalar::Int(1),
                Scalar::Float(2.5),
                Scalar::Int(3),
                Scalar::Int(4)
            ]
        );
    }

    #[test]
    fn inputs_are_checked_against_the_model() {
        let specs = [
            spec("x", DataType::Fp32, &[-1, 2]),
            spec("f", DataType::Bool, &[-1, 1]),
        ];
        let ok = request(
            r#"{"inputs":[{"name":"f","shape":[1,1],"datatype":"BOOL","data":[true]},
                          {"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#,
        );
        let tensors = validate_inputs(ok.inputs, &specs, 100).unwrap();
        assert_eq!(tensors[0].name, "x");
        assert_eq!(tensors[0].data, TensorData::Fp32(vec![1.0, 2.0]));
        assert_eq!(tensors[1].data, TensorData::Bool(vec![true]));

        let cases = [
            (
                r#"[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]"#,
                "missing input 'f'",
            ),
            (
                r#"[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]},{"name":"f","shape":[1,1],"datatype":"BOOL","data":[true]}]"#,
                "model expects [-1, 2]",
            ),
            (
                r#"[{"name":"x","shape":[1,2],"datatype":"FP64","data":[1,2]},{"name":"f","shape":[1,1],"datatype":"BOOL","data":[true]}]"#,
                "model expects FP32",
            ),
            (
                r#"[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2]},{"name":"f","shape":[1,1],"datatype":"BOOL","data":[true]}]"#,
                "but 2 data values",
            ),
            (
                r#"[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,true]},{"name":"f","shape":[1,1],"datatype":"BOOL","data":[true]}]"#,
                "element 1 is true",
            ),
            (
                r#"[{"name":"y","shape":[1,2],"datatype":"FP32","data":[1,2]}]"#,
                "unexpected input 'y'",
            ),
            (
                r#"[{"name":"x","shape":[1,2],"datatype":"FP16","data":[1,2]},{"name":"f","shape":[1,1],"datatype":"BOOL","data":[true]}]"#,
                "unsupported datatype 'FP16'",
            ),
            (
                r#"[{"name":"x","shape":[100,2],"datatype":"FP32","data":[1,2]},{"name":"f","shape":[1,1],"datatype":"BOOL","data":[true]}]"#,
                "more than the limit of 100",
            ),
        ];
        for (inputs, message) in cases {
            let r = request(&format!(r#"{{"inputs":{inputs}}}"#));
            let err = validate_inputs(r.inputs, &specs, 100).unwrap_err();
            assert!(matches!(err, ScorerError::InvalidInput(_)), "{inputs}");
            assert!(err.to_string().contains(message), "{inputs}: {err}");
        }
    }

    #[test]
    fn integer_inputs_reject_fractions_and_overflow() {
        let specs = [spec("n", DataType::Int32, &[-1])];
        let r =
            request(r#"{"inputs":[{"name":"n","shape":[2],"datatype":"INT32","data":[1.5,2]}]}"#);
        assert!(validate_inputs(r.inputs, &specs, 10).is_err());
        let r = request(
            r#"{"inputs":[{"name":"n","shape":[1],"datatype":"INT32","data":[3000000000]}]}"#,
        );
        assert!(
            validate_inputs(r.inputs, &specs, 10)
                .unwrap_err()
                .to_string()
                .contains("does not fit INT32")
        );
    }

    #[test]
    fn malformed_json_names_the_problem() {
        let err = parse_infer_request(b"{\"inputs\": [").unwrap_err();
        assert!(
            err.to_string().starts_with("malformed inference request"),
            "{err}"
        );
        let err = parse_infer_request(
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("malformed"), "{err}");
    }

    #[test]
    fn output_selection_follows_request_order() {
        let specs = [
            spec("a", DataType::Fp32, &[-1]),
            spec("b", DataType::Int64, &[-1]),
        ];
        let r = request(r#"{"inputs":[],"outputs":[{"name":"b"}]}"#);
        assert_eq!(
            select_outputs(r.outputs.as_deref(), &specs).unwrap(),
            vec![1]
        );
        assert_eq!(select_outputs(None, &specs).unwrap(), vec![0, 1]);
        let r = request(r#"{"inputs":[],"outputs":[{"name":"zzz"}]}"#);
        assert!(select_outputs(r.outputs.as_deref(), &specs).is_err());
    }
}
