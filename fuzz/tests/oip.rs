//! Fuzz target `oip`: the scorer's Open Inference Protocol body decoder
//! (`manymodels_scorer::oip::parse_infer_request`) and the checks against a model's inputs
//! (`validate_inputs`, `select_outputs`).
//!
//! Inputs: the demo request bodies and hand-made hostile ones (corpus), byte mutations of
//! them, and generated OIP-shaped JSON with hostile numbers, shapes, datatypes and
//! nesting. The property: a body is parsed or refused with a 400 that says what is wrong,
//! never a panic; the allocation stays proportional to the body; a request that validates
//! has exactly the elements its shape says.

use manymodels_fuzz::proptest::prelude::*;
use manymodels_fuzz::{Mutation, generate, mutate, mutation, peak_heap, replay};
use manymodels_scorer::ScorerError;
use manymodels_scorer::oip::{parse_infer_request, select_outputs, validate_inputs};
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
}
