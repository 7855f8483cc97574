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

/// Whether a request asks for explanations: its `parameters.contributions`, a boolean
/// (absent: no).
pub fn wants_contributions(parameters: Option<&serde_json::Value>) -> Result<bool, ScorerError> {
    match parameters.and_then(|p| p.get("contributions")) {
        None => Ok(false),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ScorerError::invalid(format!(
            "parameter contributions is {other}: expected true or false"
        ))),
    }
}

/// One JSON scalar of tensor data, before the datatype is applied.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    Float(f64),
    Int(i64),
    Bool(bool),
    /// A JSON string: bytes `start..end` of its [`RawData::text`]. Offsets rather than a
    /// `String` keep a scalar 16 bytes and `Copy`, so numbers pay nothing for strings.
    Str {
        start: u32,
        end: u32,
    },
}

/// Tensor data as sent: a flat array, or nested arrays in row-major order, flattened.
/// The datatype is applied later because JSON does not promise `datatype` comes first.
///
/// Strings (BYTES data) are kept as one buffer, `text`, with each string's place in
/// `values`: a list of strings costs its text plus 16 bytes a string until `convert`
/// knows the datatype, and numeric data never allocates `text`.
#[derive(Debug, Default)]
pub struct RawData {
    pub values: Vec<Scalar>,
    pub text: String,
}

impl RawData {
    /// The number of scalars (strings included).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The text of a `Scalar::Str` of this data.
    pub fn str(&self, start: u32, end: u32) -> &str {
        &self.text[start as usize..end as usize]
    }
}

impl<'de> Deserialize<'de> for RawData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Flatten<'a>(&'a mut RawData);

        impl<'de> de::DeserializeSeed<'de> for Flatten<'_> {
            type Value = ();
            fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
                deserializer.deserialize_any(self)
            }
        }

        impl<'de> Visitor<'de> for Flatten<'_> {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of numbers, booleans or strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                if let Some(hint) = seq.size_hint() {
                    self.0.values.reserve(hint);
                }
                while seq.next_element_seed(Flatten(self.0))?.is_some() {}
                Ok(())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
                self.0.values.push(Scalar::Float(v));
                Ok(())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
                self.0.values.push(Scalar::Int(v));
                Ok(())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
                let v = i64::try_from(v).map_err(|_| E::custom("integer out of range"))?;
                self.0.values.push(Scalar::Int(v));
                Ok(())
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
                self.0.values.push(Scalar::Bool(v));
                Ok(())
            }
            // serde_json hands over a string without escapes borrowed from the body and
            // an unescaped copy otherwise; both land here and are appended to `text`.
            fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
                let text = &mut self.0.text;
                let start = u32::try_from(text.len());
                text.push_str(v);
                let (Ok(start), Ok(end)) = (start, u32::try_from(text.len())) else {
                    return Err(E::custom("the strings of one input's data pass 4 GiB"));
                };
                self.0.values.push(Scalar::Str { start, end });
                Ok(())
            }
        }

        let mut out = RawData::default();
        deserializer.deserialize_any(Flatten(&mut out))?;
        Ok(out)
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
            _ => input.data.len(),
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
            "input '{name}' has unsupported datatype '{}' (supported: FP32, FP64, INT32, INT64, BOOL, BYTES)",
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
        Some(_) if !input.data.is_empty() => {
            return Err(ScorerError::invalid(format!(
                "input '{name}' has both data and binary_data_size"
            )));
        }
        Some(blob) => binary::decode(name, datatype, &blob, elements)?,
        None => {
            if elements != input.data.len() {
                return Err(ScorerError::invalid(
                    if input.data.is_empty() && binary::binary_data_size(&input)?.is_some() {
                        format!(
                            "input '{name}' has binary_data_size but the request has no \
                             Inference-Header-Content-Length header saying where its binary data starts"
                        )
                    } else {
                        format!(
                            "input '{name}' has shape {:?} ({elements} elements) but {} data values",
                            input.shape,
                            input.data.len()
                        )
                    },
                ));
            }
            convert(name, datatype, &input.data)?
        }
    };
    Ok(NamedTensor {
        name: input.name,
        datatype,
        shape: input.shape,
        data,
    })
}

fn convert(name: &str, datatype: DataType, data: &RawData) -> Result<TensorData, ScorerError> {
    let values = &data.values[..];
    let wrong = |i: usize, v: &Scalar| {
        ScorerError::invalid(format!(
            "input '{name}' element {i} is {} but the datatype is {}",
            match *v {
                Scalar::Float(f) => format!("{f}"),
                Scalar::Int(n) => n.to_string(),
                Scalar::Bool(b) => b.to_string(),
                Scalar::Str { start, end } => format!("the string {}", shown(data.str(start, end))),
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
                Scalar::Float(_) | Scalar::Bool(_) | Scalar::Str { .. } => Err(wrong(i, v)),
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
                Scalar::Bool(_) | Scalar::Str { .. } => Err(wrong(i, v)),
            })
            .collect()
    };
    Ok(match datatype {
        DataType::Fp32 => TensorData::Fp32(floats(values)?.into_iter().map(|f| f as f32).collect()),
        DataType::Fp64 => TensorData::Fp64(floats(values)?),
        DataType::Int64 => TensorData::Int64(ints(values)?),
        DataType::Int32 => TensorData::Int32(
            ints(values)?
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
            // Sized once: a `Result` collect would grow the vector by doubling.
            let mut strings = Vec::with_capacity(values.len());
            for (i, v) in values.iter().enumerate() {
                let Scalar::Str { start, end } = *v else {
                    return Err(wrong(i, v));
                };
                let text = data.str(start, end);
                string_element(name, i, text)?;
                strings.push(text.to_string());
            }
            TensorData::Bytes(strings)
        }
        DataType::Bool => TensorData::Bool(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| match *v {
                    Scalar::Bool(b) => Ok(b),
                    Scalar::Int(0) => Ok(false),
                    Scalar::Int(1) => Ok(true),
                    Scalar::Int(_) | Scalar::Float(_) | Scalar::Str { .. } => Err(wrong(i, v)),
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// The one rule a BYTES element must pass beyond being text: no NUL byte.
///
/// BYTES inputs are served as text. JSON strings are UTF-8 by definition and binary ones
/// are checked (`binary::decode`), so `TensorData::Bytes` holds `String`s; every model with
/// a string input runs on ONNX Runtime (the native engine takes numeric inputs only),
/// whose C API fills a string tensor from NUL-terminated C strings (`FillStringTensor`):
/// a NUL inside an element would cut it short there, so it is a 400 here instead of a
/// silently different input or a 500 from the engine.
pub(crate) fn string_element(name: &str, i: usize, text: &str) -> Result<(), ScorerError> {
    if text.contains('\0') {
        return Err(ScorerError::invalid(format!(
            "input '{name}' element {i} contains a NUL byte, which a string tensor cannot carry"
        )));
    }
    Ok(())
}

/// A string for an error message, quoted and cut to a readable length.
fn shown(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{:?}...", &text[..at]),
        None => format!("{text:?}"),
    }
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
            r.inputs[0].data.values,
            vec![
                Scalar::Int(1),
                Scalar::Float(2.5),
                Scalar::Int(3),
                Scalar::Int(4)
            ]
        );
        // Numbers never touch the string buffer.
        assert_eq!(r.inputs[0].data.text.capacity(), 0);
    }

    #[test]
    fn strings_are_flattened_row_major_into_one_buffer() {
        let r = request(
            r#"{"inputs":[{"name":"s","shape":[2,2],"datatype":"BYTES","data":[["red",""],["cr\u00e8me","a \"b\""]]}]}"#,
        );
        let data = &r.inputs[0].data;
        assert_eq!(data.len(), 4);
        assert_eq!(data.text, "redcrèmea \"b\"");
        let texts: Vec<&str> = data
            .values
            .iter()
            .map(|v| match *v {
                Scalar::Str { start, end } => data.str(start, end),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(texts, ["red", "", "crème", "a \"b\""]);
        let specs = [spec("s", DataType::Bytes, &[-1, 2])];
        let tensors = validate_inputs(r.inputs, &specs, 100).unwrap();
        assert_eq!(
            tensors[0].data,
            TensorData::Bytes(vec![
                "red".into(),
                String::new(),
                "crème".into(),
                "a \"b\"".into()
            ])
        );
        assert_eq!(tensors[0].shape, vec![2, 2]);
    }

    #[test]
    fn strings_and_numbers_are_each_refused_where_the_other_belongs() {
        let specs = [
            spec("s", DataType::Bytes, &[-1, 1]),
            spec("x", DataType::Fp32, &[-1, 2]),
        ];
        let cases = [
            (
                r#"[{"name":"s","shape":[2,1],"datatype":"BYTES","data":["a",2.5]},{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]"#,
                "input 's' element 1 is 2.5 but the datatype is BYTES",
            ),
            (
                r#"[{"name":"s","shape":[1,1],"datatype":"BYTES","data":[true]},{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]"#,
                "input 's' element 0 is true but the datatype is BYTES",
            ),
            (
                r#"[{"name":"s","shape":[1,1],"datatype":"BYTES","data":["a"]},{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,"two"]}]"#,
                r#"input 'x' element 1 is the string "two" but the datatype is FP32"#,
            ),
            (
                r#"[{"name":"s","shape":[1,1],"datatype":"BYTES","data":["a\u0000b"]},{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]"#,
                "input 's' element 0 contains a NUL byte",
            ),
            (
                r#"[{"name":"s","shape":[2,1],"datatype":"BYTES","data":["a"]},{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]"#,
                "(2 elements) but 1 data values",
            ),
            (
                r#"[{"name":"s","shape":[1,1],"datatype":"FP32","data":[1]},{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]"#,
                "input 's' has datatype FP32 but the model expects BYTES",
            ),
        ];
        for (inputs, message) in cases {
            let r = request(&format!(r#"{{"inputs":{inputs}}}"#));
            let err = validate_inputs(r.inputs, &specs, 100).unwrap_err();
            assert!(matches!(err, ScorerError::InvalidInput(_)), "{inputs}");
            assert!(err.to_string().contains(message), "{inputs}: {err}");
        }
        // Each numeric datatype names the string, cut to a readable length.
        for datatype in ["FP64", "INT32", "INT64", "BOOL"] {
            let specs = [spec("n", DataType::parse(datatype).unwrap(), &[-1])];
            let long = "z".repeat(100);
            let r = request(&format!(
                r#"{{"inputs":[{{"name":"n","shape":[2],"datatype":"{datatype}","data":[0,"{long}"]}}]}}"#
            ));
            let err = validate_inputs(r.inputs, &specs, 100)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("element 1 is the string \"{}\"...", &long[..40])),
                "{datatype}: {err}"
            );
        }
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
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[{"a":1}]}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("malformed"), "{err}");
        // A lone surrogate is not text: refused by the parser, never a string here.
        let err = parse_infer_request(
            br#"{"inputs":[{"name":"s","shape":[1],"datatype":"BYTES","data":["\ud800"]}]}"#,
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
