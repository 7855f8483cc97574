//! The REST binary tensor extension (Triton's, adopted by KServe): tensors as raw
//! little-endian bytes after the JSON header instead of JSON arrays.
//!
//! A request with `Inference-Header-Content-Length: N` is N bytes of JSON followed by the
//! inputs' blobs, in the order the inputs with a `binary_data_size` parameter appear in the
//! JSON; inputs may mix JSON `data` and binary ones. `Inference-Header-Content-Length: 0`
//! is the raw form: the whole body is the one input of a one-input model, and every output
//! comes back binary. Elements are row-major and unpadded: FP32/FP64/INT32/INT64 in their
//! native size, BOOL one byte (0 or 1), BYTES a 4-byte little-endian length and the bytes,
//! which must be UTF-8 text without NUL (`super::string_element` says why). A raw body for
//! a BYTES input is one element, the whole body, without a length prefix (Triton's rule:
//! the input must hold one element).
//!
//! Blobs are slices of the body (`Bytes::slice`, no copy) until `decode` turns one into
//! typed data, after its size has been checked against the input's shape: a lying size,
//! a truncated body or a length prefix past the end is a 400, never an allocation the
//! body does not pay for. A plain JSON request never reaches this module's decoding.
//!
//! On the way out, outputs go binary when the request asks (`binary_data_output` in the
//! request's parameters, `binary_data` on a requested output, which wins), with the
//! response's own `Inference-Header-Content-Length` and `application/octet-stream`, as
//! Triton answers.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::{InferRequest, RequestInput};
use crate::error::ScorerError;
use crate::tensor::{DataType, NamedTensor, TensorData, TensorSpec};

/// The header that splits a body into its JSON part and its binary part.
pub const HEADER: &str = "inference-header-content-length";

/// The length of the JSON part from the header's value (`None` without the header).
pub fn header_length(value: Option<&[u8]>) -> Result<Option<usize>, ScorerError> {
    let Some(value) = value else {
        return Ok(None);
    };
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.trim().parse::<usize>().ok())
        .map(Some)
        .ok_or_else(|| {
            ScorerError::invalid(format!(
                "Inference-Header-Content-Length must be a whole number of bytes, not '{}'",
                String::from_utf8_lossy(value)
            ))
        })
}

/// What the extension adds to a parsed request: each input's binary data, by its index
/// in the request's `inputs`, and the body of a raw request until `raw_input` makes it the
/// model's one input.
#[derive(Debug, Default)]
pub struct Blobs {
    pub inputs: Vec<Option<Bytes>>,
    pub raw: Option<Bytes>,
}

/// Parses a body whose JSON part is `header_length` bytes (the raw form when 0) and
/// slices each binary input's data off the rest.
pub fn parse(body: Bytes, header_length: usize) -> Result<(InferRequest, Blobs), ScorerError> {
    if header_length == 0 {
        let request = InferRequest {
            id: None,
            inputs: Vec::new(),
            outputs: None,
            parameters: None,
        };
        let blobs = Blobs {
            inputs: Vec::new(),
            raw: Some(body),
        };
        return Ok((request, blobs));
    }
    if header_length > body.len() {
        return Err(ScorerError::invalid(format!(
            "Inference-Header-Content-Length is {header_length} but the body has only {} bytes",
            body.len()
        )));
    }
    let request = super::parse_infer_request(&body[..header_length])?;
    let mut blobs = Blobs::default();
    let mut offset = header_length;
    for input in &request.inputs {
        let Some(size) = binary_data_size(input)? else {
            blobs.inputs.push(None);
            continue;
        };
        if !input.data.is_empty() {
            return Err(ScorerError::invalid(format!(
                "input '{}' has both data and binary_data_size",
                input.name
            )));
        }
        let remaining = body.len() - offset;
        if size > remaining as u64 {
            return Err(ScorerError::invalid(format!(
                "input '{}' declares binary_data_size {size} but only {remaining} bytes of binary data remain",
                input.name
            )));
        }
        let end = offset + size as usize;
        blobs.inputs.push(Some(body.slice(offset..end)));
        offset = end;
    }
    if offset != body.len() {
        return Err(ScorerError::invalid(format!(
            "the body has {} bytes after the inputs' binary data (binary_data_size values sum to {})",
            body.len() - offset,
            offset - header_length
        )));
    }
    Ok((request, blobs))
}

/// An input's `binary_data_size` parameter, if it has one.
pub fn binary_data_size(input: &RequestInput) -> Result<Option<u64>, ScorerError> {
    match input
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_size"))
    {
        None => Ok(None),
        Some(size) => size.as_u64().map(Some).ok_or_else(|| {
            ScorerError::invalid(format!(
                "input '{}' has binary_data_size {size}: expected a non-negative integer",
                input.name
            ))
        }),
    }
}

/// Turns a raw request (the whole body one tensor) into one binary input of the model's
/// only input, its one variable dimension taken from the body's length; for a BYTES input
/// the body is one element (`raw_string`).
pub fn raw_input(
    request: &mut InferRequest,
    blobs: &mut Blobs,
    specs: &[TensorSpec],
) -> Result<(), ScorerError> {
    let Some(body) = blobs.raw.take() else {
        return Ok(());
    };
    let [spec] = specs else {
        return Err(ScorerError::invalid(format!(
            "a raw binary request (Inference-Header-Content-Length: 0) needs a model with one input; this one has {}",
            specs.len()
        )));
    };
    let Some(size) = element_size(spec.datatype) else {
        return raw_string(request, blobs, spec, body);
    };
    let variable = spec.shape.iter().filter(|d| **d < 0).count();
    let fixed: usize = spec
        .shape
        .iter()
        .filter(|d| **d >= 0)
        .fold(1usize, |n, d| n.saturating_mul(*d as usize));
    let elements = body.len() / size;
    let fits = body.len() % size == 0
        && variable <= 1
        && fixed > 0
        && elements % fixed == 0
        && (variable == 1 || elements == fixed);
    if !fits {
        return Err(ScorerError::invalid(format!(
            "a raw binary body of {} bytes is not a whole {} tensor of shape {:?} (-1 = any; at most one)",
            body.len(),
            spec.datatype.as_str(),
            spec.shape
        )));
    }
    let shape = spec
        .shape
        .iter()
        .map(|d| {
            if *d < 0 {
                (elements / fixed) as i64
            } else {
                *d
            }
        })
        .collect();
    request.inputs.push(RequestInput {
        name: spec.name.clone(),
        shape,
        datatype: spec.datatype.as_str().to_string(),
        parameters: None,
        data: Default::default(),
    });
    blobs.inputs = vec![Some(body)];
    // Every output of a raw request comes back binary.
    request.parameters = Some(serde_json::json!({ "binary_data_output": true }));
    Ok(())
}

/// `raw_input` for a BYTES input: the whole body is one string, so the input must hold
/// exactly one element (every dimension 1, a variable one taken as 1), as Triton has it.
/// The body gets the length prefix every other BYTES blob has, so it is decoded and
/// checked (UTF-8, no NUL) like them; that copies it once, as turning it into a `String`
/// would anyway.
fn raw_string(
    request: &mut InferRequest,
    blobs: &mut Blobs,
    spec: &TensorSpec,
    body: Bytes,
) -> Result<(), ScorerError> {
    if spec.shape.iter().any(|d| *d >= 0 && *d != 1) {
        return Err(ScorerError::invalid(format!(
            "a raw binary request carries one BYTES element (the whole body), but the model's \
             input '{}' has shape {:?} (-1 = any): send the JSON header with binary_data_size",
            spec.name, spec.shape
        )));
    }
    let Ok(length) = u32::try_from(body.len()) else {
        return Err(ScorerError::invalid(format!(
            "a raw BYTES body of {} bytes is longer than a BYTES element can be (4 GiB)",
            body.len()
        )));
    };
    let mut blob = Vec::with_capacity(4 + body.len());
    blob.extend_from_slice(&length.to_le_bytes());
    blob.extend_from_slice(&body);
    request.inputs.push(RequestInput {
        name: spec.name.clone(),
        shape: spec.shape.iter().map(|_| 1).collect(),
        datatype: DataType::Bytes.as_str().to_string(),
        parameters: None,
        data: Default::default(),
    });
    blobs.inputs = vec![Some(Bytes::from(blob))];
    // Every output of a raw request comes back binary.
    request.parameters = Some(serde_json::json!({ "binary_data_output": true }));
    Ok(())
}

/// The size of one element, `None` for BYTES (length-prefixed).
fn element_size(datatype: DataType) -> Option<usize> {
    match datatype {
        DataType::Fp32 | DataType::Int32 => Some(4),
        DataType::Fp64 | DataType::Int64 => Some(8),
        DataType::Bool => Some(1),
        DataType::Bytes => None,
    }
}

/// How many elements a blob holds, for the request-wide element limit before anything is
/// decoded: whole elements for fixed sizes, length prefixes walked (without allocating)
/// for BYTES, stopping at a prefix past the end. An unknown datatype counts 0 and fails
/// later with its name.
pub fn count(datatype: &str, blob: &[u8]) -> usize {
    match DataType::parse(datatype) {
        None => 0,
        Some(DataType::Bytes) => {
            let mut n = 0;
            let mut rest = blob;
            while let Some((_, tail)) = next_string(rest) {
                n += 1;
                rest = tail;
            }
            n
        }
        Some(t) => blob.len() / element_size(t).expect("fixed size"),
    }
}

/// One BYTES element off the front of `blob`: its bytes and the rest, or `None` when the
/// prefix or the bytes it announces run past the end.
fn next_string(blob: &[u8]) -> Option<(&[u8], &[u8])> {
    let (prefix, rest) = blob.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*prefix) as usize;
    (len <= rest.len()).then(|| rest.split_at(len))
}

/// Decodes input `name`'s blob as `elements` elements of `datatype`, checking the size
/// first: the blob must hold exactly that many, no more and no less.
pub fn decode(
    name: &str,
    datatype: DataType,
    blob: &[u8],
    elements: usize,
) -> Result<TensorData, ScorerError> {
    let Some(size) = element_size(datatype) else {
        return decode_strings(name, blob, elements);
    };
    if elements.checked_mul(size) != Some(blob.len()) {
        return Err(ScorerError::invalid(format!(
            "input '{name}' has {elements} {} elements ({} bytes) but binary_data_size {}",
            datatype.as_str(),
            elements.saturating_mul(size),
            blob.len()
        )));
    }
    fn le<const N: usize, T>(blob: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
        blob.chunks_exact(N)
            .map(|c| f(c.try_into().expect("exact chunk")))
            .collect()
    }
    Ok(match datatype {
        DataType::Fp32 => TensorData::Fp32(le(blob, f32::from_le_bytes)),
        DataType::Fp64 => TensorData::Fp64(le(blob, f64::from_le_bytes)),
        DataType::Int32 => TensorData::Int32(le(blob, i32::from_le_bytes)),
        DataType::Int64 => TensorData::Int64(le(blob, i64::from_le_bytes)),
        DataType::Bool => TensorData::Bool(
            blob.iter()
                .enumerate()
                .map(|(i, b)| match b {
                    0 => Ok(false),
                    1 => Ok(true),
                    other => Err(ScorerError::invalid(format!(
                        "input '{name}' element {i} is the byte {other}: a BOOL is 0 or 1"
                    ))),
                })
                .collect::<Result<_, _>>()?,
        ),
        DataType::Bytes => unreachable!("handled above"),
    })
}

/// Decodes a BYTES blob of exactly `elements` elements. The whole blob is walked first
/// without allocating, so a lying count, a cut prefix or a length past the end costs no
/// memory and is a 400 saying which; then each element must be UTF-8 text without NUL.
fn decode_strings(name: &str, blob: &[u8], elements: usize) -> Result<TensorData, ScorerError> {
    let mut found = 0usize;
    let mut rest = blob;
    while !rest.is_empty() {
        let at = blob.len() - rest.len();
        let Some((prefix, tail)) = rest.split_first_chunk::<4>() else {
            return Err(ScorerError::invalid(format!(
                "input '{name}' element {found}: its 4-byte length is cut short ({} bytes at \
                 byte {at} of {})",
                rest.len(),
                blob.len()
            )));
        };
        let len = u32::from_le_bytes(*prefix) as usize;
        if len > tail.len() {
            return Err(ScorerError::invalid(format!(
                "input '{name}' element {found} has length {len} (at byte {at}) but only {} \
                 bytes of the input's binary data remain",
                tail.len()
            )));
        }
        rest = &tail[len..];
        found += 1;
    }
    if found != elements {
        return Err(ScorerError::invalid(format!(
            "input '{name}' has {elements} elements by its shape but its {} bytes of binary \
             data hold {found} BYTES elements (a 4-byte length, then the bytes)",
            blob.len()
        )));
    }
    let mut strings = Vec::with_capacity(elements);
    let mut rest = blob;
    for i in 0..elements {
        let (bytes, tail) = next_string(rest).expect("walked above");
        let text = std::str::from_utf8(bytes).map_err(|_| {
            ScorerError::invalid(format!(
                "input '{name}' element {i} is not UTF-8 (BYTES inputs are text here)"
            ))
        })?;
        super::string_element(name, i, text)?;
        strings.push(text.to_string());
        rest = tail;
    }
    Ok(TensorData::Bytes(strings))
}

/// A boolean parameter (`binary_data`, `binary_data_output`), `None` when absent.
pub(crate) fn flag(parameters: Option<&Value>, key: &str) -> Result<Option<bool>, ScorerError> {
    match parameters.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ScorerError::invalid(format!(
            "parameter {key} is {other}: expected true or false"
        ))),
    }
}

/// Which of the `count` selected outputs go back binary, in selection order, or `None`
/// when none does (the plain JSON response). A requested output's `binary_data` wins
/// over the request's `binary_data_output` (which `raw_input` sets for a raw request).
pub fn binary_outputs(
    request: &InferRequest,
    count: usize,
) -> Result<Option<Vec<bool>>, ScorerError> {
    if request.parameters.is_none()
        && request
            .outputs
            .as_deref()
            .is_none_or(|o| o.iter().all(|o| o.parameters.is_none()))
    {
        return Ok(None);
    }
    let default = flag(request.parameters.as_ref(), "binary_data_output")?.unwrap_or(false);
    let modes = match request.outputs.as_deref() {
        Some(outputs) if !outputs.is_empty() => outputs
            .iter()
            .map(|o| Ok(flag(o.parameters.as_ref(), "binary_data")?.unwrap_or(default)))
            .collect::<Result<Vec<_>, ScorerError>>()?,
        _ => vec![default; count],
    };
    Ok(modes.contains(&true).then_some(modes))
}

#[derive(Serialize)]
struct Header<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputHeader<'a>>,
}

#[derive(Serialize)]
struct OutputHeader<'a> {
    name: &'a str,
    datatype: DataType,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<SizeParameter>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a TensorData>,
}

#[derive(Serialize)]
struct SizeParameter {
    binary_data_size: usize,
}

/// A response with the outputs `binary[i]` marks as binary: the JSON header (binary
/// outputs carry `binary_data_size` instead of `data`), then their blobs in output order.
/// Returns the body and the header's length, for `Inference-Header-Content-Length`.
pub fn response(
    model_name: &str,
    model_version: &str,
    id: Option<&str>,
    outputs: &[NamedTensor],
    binary: &[bool],
) -> Result<(Vec<u8>, usize), serde_json::Error> {
    let blob_bytes: usize = outputs
        .iter()
        .zip(binary)
        .filter(|(_, b)| **b)
        .map(|(o, _)| encoded_len(&o.data))
        .sum();
    let header = Header {
        model_name,
        model_version,
        id,
        outputs: outputs
            .iter()
            .zip(binary.iter().chain(std::iter::repeat(&false)))
            .map(|(o, binary)| OutputHeader {
                name: &o.name,
                datatype: o.datatype,
                shape: &o.shape,
                parameters: binary.then(|| SizeParameter {
                    binary_data_size: encoded_len(&o.data),
                }),
                data: (!binary).then_some(&o.data),
            })
            .collect(),
    };
    let mut body = serde_json::to_vec(&header)?;
    let header_length = body.len();
    body.reserve_exact(blob_bytes);
    for (output, _) in outputs.iter().zip(binary).filter(|(_, b)| **b) {
        encode(&output.data, &mut body);
    }
    Ok((body, header_length))
}

/// The bytes `encode` writes for `data`.
pub fn encoded_len(data: &TensorData) -> usize {
    match data {
        TensorData::Bytes(v) => v.iter().map(|s| 4 + s.len()).sum(),
        other => other.len() * element_size(other.datatype()).expect("fixed size"),
    }
}

/// Appends `data` in the extension's encoding.
pub fn encode(data: &TensorData, out: &mut Vec<u8>) {
    match data {
        TensorData::Fp32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Fp64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Int32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Int64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Bool(v) => out.extend(v.iter().map(|b| u8::from(*b))),
        TensorData::Bytes(v) => {
            for s in v {
                // A string past 4 GiB cannot come from a model output here; saturate
                // rather than wrap if it ever did.
                let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests;
