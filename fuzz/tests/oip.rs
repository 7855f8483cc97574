//! Fuzz target `oip`: the scorer's Open Inference Protocol body decoder
//! (`manymodels_scorer::oip::parse_infer_request`) and the checks against a model's inputs
//! (`validate_inputs`, `select_outputs`).
//!
//! Inputs: the demo request bodies and hand-made hostile ones (corpus), byte mutations of
//! them, and generated OIP-shaped JSON with hostile numbers, shapes, datatypes and
//! nesting. The property: a body is parsed or refused with a 400 that says what is wrong,
//! never a panic; the allocation stays proportional to the body; a request that validates
//! has exactly the elements its shape says.
//!
//! Binary bodies (the REST binary tensor extension: a JSON header, then blobs sized by
//! `binary_data_size`) go through `binary::parse`, the raw form and `validate_inputs_with`
//! under the same property: generated ones with sizes that lie, huge shapes and BYTES
//! length prefixes past the end, and mutations of the `binary-*.bin` seeds.

use bytes::Bytes;
use manymodels_fuzz::proptest::prelude::*;
use manymodels_fuzz::{Mutation, generate, mutate, mutation, peak_heap, replay};
use manymodels_scorer::ScorerError;
use manymodels_scorer::oip::{
    binary, parse_infer_request, select_outputs, validate_inputs, validate_inputs_with,
};
use manymodels_scorer::tensor::{DataType, TensorSpec};
use serde_json::{Value, json};

const MAX_ELEMENTS: usize = 1 << 20;

fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype,
        shape: shape.to_vec(),
    }
}

/// Model signatures the demo models declare.
fn fixed_specs() -> Vec<Vec<TensorSpec>> {
    vec![
        vec![spec("input", DataType::Fp32, &[-1, 10])],
        vec![spec("input", DataType::Fp64, &[-1, 6])],
        vec![spec("x", DataType::Int32, &[-1, 3])],
        vec![
            spec("numeric", DataType::Fp32, &[-1, 4]),
            spec("flags", DataType::Bool, &[-1, 2]),
            spec("store_code", DataType::Int64, &[-1, 1]),
        ],
    ]
}

fn clear(error: &ScorerError) -> Result<(), String> {
    match error {
        ScorerError::InvalidInput(message) if !message.is_empty() => Ok(()),
        other => Err(format!("not a clear 400: {other:?}")),
    }
}

/// The property for one body.
fn check(body: &[u8]) -> Result<(), String> {
    let (parsed, peak) = peak_heap(|| parse_infer_request(body));
    // A scalar takes 16 bytes and at least 2 body bytes; nesting and strings little more.
    if peak > 16 * body.len() + (64 << 10) {
        return Err(format!(
            "a {}-byte body peaked at {peak} heap bytes",
            body.len()
        ));
    }
    let request = match parsed {
        Ok(request) => request,
        Err(e) => return clear(&e),
    };
    // Against the model the request itself describes (-1 for the first dimension), so
    // the checks run past the names, and against each demo signature.
    let own: Vec<TensorSpec> = request
        .inputs
        .iter()
        .map(|i| TensorSpec {
            name: i.name.clone(),
            datatype: DataType::parse(&i.datatype).unwrap_or(DataType::Fp32),
            shape: i
                .shape
                .iter()
                .enumerate()
                .map(|(k, &d)| if k == 0 { -1 } else { d })
                .collect(),
        })
        .collect();
    let mut signatures = fixed_specs();
    signatures.push(own);
    for specs in &signatures {
        let request =
            parse_infer_request(body).map_err(|e| format!("parsed once, not twice: {e:?}"))?;
        let outputs = select_outputs(request.outputs.as_deref(), specs);
        if let Err(e) = &outputs {
            clear(e)?;
        }
        match validate_inputs(request.inputs, specs, MAX_ELEMENTS) {
            Ok(tensors) => {
                for t in &tensors {
                    let elements = t
                        .shape
                        .iter()
                        .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?));
                    // No dimension may exceed the limit either, even with a zero beside
                    // it: an engine sizes its output by the rows.
                    let extent = t.shape.iter().try_fold(1usize, |n, &d| {
                        n.checked_mul(usize::try_from(d).ok()?.max(1))
                    });
                    if elements != Some(t.data.len())
                        || t.data.datatype() != t.datatype
                        || extent.is_none_or(|e| e > MAX_ELEMENTS)
                    {
                        return Err(format!("validated tensor disagrees with itself: {t:?}"));
                    }
                }
            }
            Err(e) => clear(&e)?,
        }
    }
    Ok(())
}

/// A hostile number as JSON text (not every one is valid JSON: that is the point).
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        Just("18446744073709551616".to_string()),
        Just("1e400".into()),
        Just("-1e400".into()),
        Just("5e-324".into()),
        Just("NaN".into()),
        Just("-0".into()),
        Just("0.0000000000000000000000000000001e-400".into()),
        Just("2147483648".into()),
        Just("true".into()),
        Just("null".into()),
        Just("\"1\"".into()),
        (0u8..2).prop_map(|b| b.to_string()),
    ]
}

/// Data: flat, nested to a random depth (past serde_json's 128 limit sometimes), ragged.
fn data() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(number(), 0..24),
        prop_oneof![4 => 0usize..3, 1 => 100usize..140],
        0usize..5,
    )
        .prop_map(|(values, depth, ragged)| {
            let mut text = String::from("[");
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                if ragged > 0 && i % (ragged + 1) == 0 {
                    text.push('[');
                    text.push_str(v);
                    text.push(']');
                } else {
                    text.push_str(v);
                }
            }
            text.push(']');
            format!("{}{text}{}", "[".repeat(depth), "]".repeat(depth))
        })
}

fn input() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "input",
            "numeric",
            "flags",
            "store_code",
            "x",
            "",
            "in\\u0000put",
        ]),
        prop::collection::vec(
            prop_oneof![4 => 0i64..12, 1 => any::<i64>(), 1 => Just(-1i64), 1 => Just(i64::MAX)],
            0..4,
        ),
        prop::sample::select(vec![
            "FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES", "fp32", "FP16", "",
        ]),
        data(),
        any::<bool>(),
    )
        .prop_map(|(name, shape, datatype, data, data_first)| {
            let shape = serde_json::to_string(&shape).expect("a vec of i64");
            if data_first {
                format!(
                    r#"{{"data":{data},"name":"{name}","datatype":"{datatype}","shape":{shape}}}"#
                )
            } else {
                format!(
                    r#"{{"name":"{name}","shape":{shape},"datatype":"{datatype}","data":{data}}}"#
                )
            }
        })
}

#[derive(Clone, Debug)]
enum Body {
    Generated(String),
    Mutated {
        seed: usize,
        mutations: Vec<Mutation>,
    },
}

#[test]
fn oip() {
    let files = replay("oip", |_, body| check(body));
    println!("fuzz oip: {files} corpus files replayed");
    let seeds: Vec<Vec<u8>> = manymodels_fuzz::corpus("oip")
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    let outputs = prop::option::of(prop::collection::vec(
        prop::sample::select(vec!["variable", "label", "probabilities", "score", "nope"]),
        0..3,
    ));
    let generated = (prop::collection::vec(input(), 0..4), outputs, any::<bool>()).prop_map(
        |(inputs, outputs, with_id)| {
            let mut body = format!(r#"{{"inputs":[{}]"#, inputs.join(","));
            if let Some(outputs) = outputs {
                let outputs: Vec<Value> = outputs.iter().map(|n| json!({ "name": n })).collect();
                body.push_str(&format!(r#","outputs":{}"#, Value::Array(outputs)));
            }
            if with_id {
                body.push_str(r#","id":"r-1","parameters":{"a":[1,{"b":null}]}"#);
            }
            body.push('}');
            Body::Generated(body)
        },
    );
    let mutated = (0..seeds.len(), prop::collection::vec(mutation(), 1..5))
        .prop_map(|(seed, mutations)| Body::Mutated { seed, mutations });
    let strategy = prop_oneof![generated, mutated];
    generate("oip", 20_000, strategy, |body| {
        let bytes = match body {
            Body::Generated(text) => text.into_bytes(),
            Body::Mutated { seed, mutations } => {
                let mut bytes = seeds[seed].clone();
                for m in &mutations {
                    mutate(&mut bytes, m);
                }
                bytes
            }
        };
        check(&bytes)
    });
    binary_bodies();
}

/// The property for a body under the binary tensor extension whose JSON part is
/// `header_length` bytes (0: the raw form): parsed or refused with a clear 400, never a
/// panic; the blobs are slices, so parsing allocates little beyond the JSON; decoding
/// allocates in proportion to the body (a BYTES element of 4 bytes becomes a `String`);
/// a request that validates has exactly the elements its shape says.
fn check_binary(body: &[u8], header_length: usize) -> Result<(), String> {
    let bytes = Bytes::copy_from_slice(body);
    let (parsed, peak) = peak_heap(|| binary::parse(bytes.clone(), header_length));
    if peak > 16 * body.len() + (64 << 10) {
        return Err(format!(
            "a {}-byte body peaked at {peak} heap bytes",
            body.len()
        ));
    }
    let own = match parsed {
        Ok((request, _)) => request
            .inputs
            .iter()
            .map(|i| TensorSpec {
                name: i.name.clone(),
                datatype: DataType::parse(&i.datatype).unwrap_or(DataType::Fp32),
                shape: i
                    .shape
                    .iter()
                    .enumerate()
                    .map(|(k, &d)| if k == 0 { -1 } else { d })
                    .collect(),
            })
            .collect::<Vec<_>>(),
        Err(e) => return clear(&e),
    };
    let mut signatures = fixed_specs();
    signatures.push(vec![spec("s", DataType::Bytes, &[-1])]);
    signatures.push(own);
    for specs in &signatures {
        let (mut request, mut blobs) = binary::parse(bytes.clone(), header_length)
            .map_err(|e| format!("parsed once, not twice: {e:?}"))?;
        if let Err(e) = binary::raw_input(&mut request, &mut blobs, specs) {
            clear(&e)?;
            continue;
        }
        if let Err(e) = binary::binary_outputs(&request, specs.len()) {
            clear(&e)?;
        }
        let (validated, peak) =
            peak_heap(|| validate_inputs_with(request.inputs, blobs.inputs, specs, MAX_ELEMENTS));
        if peak > 16 * body.len() + (64 << 10) {
            return Err(format!(
                "decoding a {}-byte body peaked at {peak} heap bytes",
                body.len()
            ));
        }
        match validated {
            Ok(tensors) => {
                for t in &tensors {
                    let elements = t
                        .shape
                        .iter()
                        .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?));
                    if elements != Some(t.data.len()) || t.data.datatype() != t.datatype {
                        return Err(format!("validated tensor disagrees with itself: {t:?}"));
                    }
                }
            }
            Err(e) => clear(&e)?,
        }
    }
    Ok(())
}

/// A binary body: a JSON header naming inputs with `binary_data_size` (often the right
/// size for the shape, sometimes a lie, huge or negative), then blobs (random bytes or
/// well-formed BYTES elements, sometimes with a length prefix past the end), split at the
/// header's length, 0 (raw) or a wrong length.
fn binary_body() -> impl Strategy<Value = (Vec<u8>, usize)> {
    let tensor = (
        prop::sample::select(vec!["input", "numeric", "flags", "store_code", "x", "s"]),
        prop::collection::vec(
            prop_oneof![4 => 0i64..6, 1 => Just(-1i64), 1 => Just(i64::MAX)],
            0..3,
        ),
        prop::sample::select(vec![
            "FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES", "FP16",
        ]),
        prop_oneof![4 => Just(None), 1 => any::<u64>().prop_map(Some), 1 => Just(Some(u64::MAX))],
        prop::collection::vec(prop_oneof![any::<u8>(), Just(0u8), Just(1u8)], 0..64),
        prop::collection::vec("[a-z]{0,5}", 0..6),
        any::<bool>(),
    );
    (
        prop::collection::vec(tensor, 0..4),
        any::<bool>(),
        prop_oneof![6 => Just(0usize), 1 => Just(1usize), 1 => Just(2usize), 1 => Just(3usize)],
        any::<usize>(),
    )
        .prop_map(|(tensors, output_binary, split, wrong)| {
            let mut inputs = Vec::new();
            let mut blobs: Vec<u8> = Vec::new();
            for (name, shape, datatype, lie, random, strings, past_end) in tensors {
                let count: i64 = shape.iter().map(|d| (*d).clamp(0, 6)).product();
                let mut blob = if datatype == "BYTES" {
                    let mut b = Vec::new();
                    for s in strings.iter().take(count as usize) {
                        b.extend((s.len() as u32).to_le_bytes());
                        b.extend(s.as_bytes());
                    }
                    b
                } else {
                    let size = match datatype {
                        "FP64" | "INT64" => 8,
                        "BOOL" => 1,
                        _ => 4,
                    };
                    random
                        .iter()
                        .copied()
                        .cycle()
                        .take(count as usize * size)
                        .collect()
                };
                if past_end && datatype == "BYTES" {
                    blob.extend(u32::MAX.to_le_bytes());
                }
                let size = lie.unwrap_or(blob.len() as u64);
                inputs.push(json!({ "name": name, "shape": shape, "datatype": datatype,
                                    "parameters": { "binary_data_size": size } }));
                blobs.extend(blob);
            }
            let header = json!({ "inputs": inputs,
                                 "parameters": { "binary_data_output": output_binary } })
            .to_string();
            let length = match split {
                0 => header.len(),
                1 => 0,
                2 => header.len() + wrong % 64,
                _ => wrong % (header.len() + 1),
            };
            let mut body = header.into_bytes();
            body.extend(blobs);
            (body, length)
        })
}

/// The binary half of the target, run after the JSON half by `oip` (one test: one seed
/// schedule and one time budget for the target).
fn binary_bodies() {
    // Binary seeds (`binary-*.bin`) are a JSON header, a newline, then the blobs; the
    // header's length runs to the newline (JSON allows it as trailing white space).
    let binary_seeds: Vec<(Vec<u8>, usize)> = manymodels_fuzz::corpus("oip")
        .into_iter()
        .filter(|(name, _)| name.starts_with("binary-"))
        .map(|(_, b)| {
            let length = b.iter().position(|&c| c == b'\n').map_or(0, |n| n + 1);
            (b, length)
        })
        .collect();
    assert!(binary_seeds.len() >= 3, "binary seeds in fuzz/corpus/oip");
    for (body, length) in &binary_seeds {
        if let Err(e) = check_binary(body, *length) {
            panic!("binary seed: {e}");
        }
    }
    let mutated = (
        0..binary_seeds.len(),
        prop::collection::vec(mutation(), 1..5),
    )
        .prop_map(move |(seed, mutations)| {
            let (mut body, length) = binary_seeds[seed].clone();
            for m in &mutations {
                mutate(&mut body, m);
            }
            (body, length)
        });
    generate(
        "oip-binary",
        10_000,
        prop_oneof![binary_body(), mutated],
        |(body, length)| check_binary(&body, length),
    );
}
