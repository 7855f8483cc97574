//! The REST binary tensor extension: binary inputs, binary outputs, both mixed with JSON,
//! the raw single-input form, and hostile framing answered with a 400.

use super::*;

/// Flattens nested JSON arrays into their scalars, row-major.
fn flat(value: &Value, out: &mut Vec<Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flat(v, out)),
        other => out.push(other.clone()),
    }
}

/// `data` of `datatype` in the extension's encoding (BYTES: a 4-byte little-endian
/// length, then the string's UTF-8 bytes).
pub(super) fn encode(datatype: &str, data: &Value) -> Vec<u8> {
    let mut values = Vec::new();
    flat(data, &mut values);
    let mut out = Vec::new();
    for v in values {
        match datatype {
            "FP32" => out.extend((v.as_f64().unwrap() as f32).to_le_bytes()),
            "FP64" => out.extend(v.as_f64().unwrap().to_le_bytes()),
            "INT32" => out.extend((v.as_i64().unwrap() as i32).to_le_bytes()),
            "INT64" => out.extend(v.as_i64().unwrap().to_le_bytes()),
            "BOOL" => out.push(u8::from(v.as_bool().unwrap())),
            "BYTES" => {
                let text = v.as_str().unwrap();
                out.extend((text.len() as u32).to_le_bytes());
                out.extend(text.as_bytes());
            }
            other => panic!("no encoding for {other}"),
        }
    }
    out
}

/// The blob of `datatype` as JSON values.
fn decode(datatype: &str, blob: &[u8]) -> Vec<Value> {
    if datatype == "BYTES" {
        let mut out = Vec::new();
        let mut rest = blob;
        while let Some((prefix, tail)) = rest.split_first_chunk::<4>() {
            let (text, tail) = tail.split_at(u32::from_le_bytes(*prefix) as usize);
            out.push(json!(std::str::from_utf8(text).unwrap()));
            rest = tail;
        }
        return out;
    }
    let size = match datatype {
        "FP32" | "INT32" => 4,
        "FP64" | "INT64" => 8,
        "BOOL" => 1,
        other => panic!("no decoding for {other}"),
    };
    blob.chunks_exact(size)
        .map(|c| match datatype {
            "FP32" => json!(f32::from_le_bytes(c.try_into().unwrap())),
            "FP64" => json!(f64::from_le_bytes(c.try_into().unwrap())),
            "INT32" => json!(i32::from_le_bytes(c.try_into().unwrap())),
            "INT64" => json!(i64::from_le_bytes(c.try_into().unwrap())),
            _ => json!(c[0] == 1),
        })
        .collect()
}

/// A body of `header` then `blobs`, posted with `Inference-Header-Content-Length`.
pub(super) async fn post_binary(
    router: &Router,
    uri: &str,
    header: &Value,
    blobs: &[Vec<u8>],
) -> Reply {
    let mut body = header.to_string().into_bytes();
    let length = body.len();
    blobs.iter().for_each(|b| body.extend_from_slice(b));
    post_framed(router, uri, length, body).await
}

pub(super) async fn post_framed(
    router: &Router,
    uri: &str,
    header_length: usize,
    body: Vec<u8>,
) -> Reply {
    let request = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/octet-stream")
        .header("inference-header-content-length", header_length.to_string())
        .body(Body::from(body))
        .expect("valid request");
    send(router, request).await
}

/// The JSON response a binary one stands for: each binary output's blob decoded into
/// `data`, checking the framing on the way.
pub(super) fn unframe(reply: &Reply) -> Value {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.header("content-type"),
        Some("application/octet-stream")
    );
    let length: usize = reply
        .header("inference-header-content-length")
        .expect("the response's header length")
        .parse()
        .unwrap();
    let mut response: Value = serde_json::from_slice(&reply.bytes[..length]).unwrap();
    let mut offset = length;
    for output in response["outputs"].as_array_mut().unwrap() {
        let Some(size) = output["parameters"]["binary_data_size"].as_u64() else {
            continue;
        };
        let blob = &reply.bytes[offset..offset + size as usize];
        offset += size as usize;
        output["data"] = Value::Array(decode(output["datatype"].as_str().unwrap(), blob));
    }
    assert_eq!(offset, reply.bytes.len(), "bytes after the last output");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_model_scores_binary_inputs_into_binary_outputs() {
    let router = demo_router();
    for model in demo_reference() {
        let id = model["id"].as_str().unwrap();
        let mut inputs = Vec::new();
        let mut blobs = Vec::new();
        for input in model["inputs"].as_array().unwrap() {
            let blob = encode(input["datatype"].as_str().unwrap(), &input["data"]);
            inputs.push(json!({
                "name": input["name"], "shape": input["shape"], "datatype": input["datatype"],
                "parameters": { "binary_data_size": blob.len() },
            }));
            blobs.push(blob);
        }
        // As tritonclient sends it with its defaults: no `outputs`, `binary_data_output`.
        let header =
            json!({ "id": "b", "inputs": inputs, "parameters": { "binary_data_output": true } });
        let reply = post_binary(&router, &format!("/v2/models/{id}/infer"), &header, &blobs).await;
        let response = unframe(&reply);
        assert_eq!(response["id"], "b");
        assert_eq!(response["model_version"], "1");
        assert!(reply.header("x-mm-cache").is_some());
        assert_outputs_match(&response, &model, TOLERANCE);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_binary_mix_on_both_sides() {
    let router = demo_router();
    let model = reference("multi-input");
    // `numeric` binary, the rest JSON; the first output JSON, the second binary.
    let mut inputs = Vec::new();
    let mut blobs = Vec::new();
    for input in model["inputs"].as_array().unwrap() {
        if input["name"] == "numeric" {
            let blob = encode("FP32", &input["data"]);
            inputs.push(json!({
                "name": "numeric", "shape": input["shape"], "datatype": "FP32",
                "parameters": { "binary_data_size": blob.len() },
            }));
            blobs.push(blob);
        } else {
            inputs.push(input.clone());
        }
    }
    let outputs = json!([
        { "name": "score", "parameters": { "binary_data": false } },
        { "name": "numeric_sum", "parameters": { "binary_data": true } },
    ]);
    let header = json!({ "inputs": inputs, "outputs": outputs });
    let reply = post_binary(&router, "/v2/models/multi-input/infer", &header, &blobs).await;
    let response = unframe(&reply);
    assert!(response["outputs"][0].get("parameters").is_none());
    assert!(response["outputs"][1].get("parameters").is_some());
    assert_outputs_match(&response, &model, TOLERANCE);

    // Binary inputs with no binary output asked for answer plain JSON.
    let header = json!({ "inputs": inputs });
    let reply = post_binary(&router, "/v2/models/multi-input/infer", &header, &blobs).await;
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_outputs_match(&reply.ok(), &model, TOLERANCE);

    // JSON inputs may ask for binary outputs without the header.
    let mut body = inputs_body(&model);
    body["parameters"] = json!({ "binary_data_output": true });
    let reply = post_json(&router, "/v2/models/multi-input/infer", &body).await;
    assert_outputs_match(&unframe(&reply), &model, TOLERANCE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_body_is_the_only_input_and_answers_binary() {
    let router = demo_router();
    let model = reference("linear-small");
    let body = encode("FP32", &model["inputs"][0]["data"]);
    let reply = post_framed(&router, "/v2/models/linear-small/infer", 0, body).await;
    assert_outputs_match(&unframe(&reply), &model, TOLERANCE);
    post_framed(&router, "/v2/models/multi-input/infer", 0, vec![0; 16])
        .await
        .assert_error(StatusCode::BAD_REQUEST, "needs a model with one input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_framing_is_a_400_that_says_why() {
    let router = demo_router();
    let uri = "/v2/models/linear-small/infer";
    let header = |size: u64, shape: [u64; 2]| {
        json!({ "inputs": [{ "name": "input", "shape": shape, "datatype": "FP32",
                             "parameters": { "binary_data_size": size } }] })
    };
    let row = vec![0u8; 40];
    let blobs = [row.clone()];
    let cases: Vec<(Reply, &str)> = vec![
        (
            post_binary(&router, uri, &header(41, [1, 10]), &blobs).await,
            "only 40 bytes of binary data remain",
        ),
        (
            post_binary(&router, uri, &header(u64::MAX, [1, 10]), &blobs).await,
            "only 40 bytes",
        ),
        (
            post_binary(&router, uri, &header(36, [1, 10]), &blobs).await,
            "4 bytes after",
        ),
        (
            post_binary(&router, uri, &header(40, [2, 10]), &blobs).await,
            "binary_data_size 40",
        ),
        (
            post_binary(&router, uri, &header(40, [1 << 40, 10]), &blobs).await,
            "more than the limit",
        ),
        (
            post_framed(&router, uri, 1 << 20, row.clone()).await,
            "the body has only 40 bytes",
        ),
        (
            post_json(&router, uri, &header(40, [1, 10])).await,
            "no Inference-Header-Content-Length",
        ),
    ];
    for (reply, needle) in cases {
        reply.assert_error(StatusCode::BAD_REQUEST, needle);
    }
    let request = Request::builder()
        .method("POST")
        .uri(uri)
        .header("inference-header-content-length", "ten")
        .body(Body::from(row))
        .unwrap();
    send(&router, request)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "whole number of bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_class_labels_come_back_as_length_prefixed_bytes() {
    use manymodels_tests::classifiers::{
        assert_classified, classifier_reference, classifier_store,
    };
    let (_scorer, router) = scorer_for(&classifier_store(), |_| {});
    let mut saw_bytes = false;
    for reference in classifier_reference() {
        let id = reference["id"].as_str().unwrap();
        let mut inputs = Vec::new();
        let mut blobs = Vec::new();
        for input in reference["inputs"].as_array().unwrap() {
            let blob = encode(input["datatype"].as_str().unwrap(), &input["data"]);
            inputs.push(json!({
                "name": input["name"], "shape": input["shape"], "datatype": input["datatype"],
                "parameters": { "binary_data_size": blob.len() },
            }));
            blobs.push(blob);
        }
        let header = json!({ "inputs": inputs, "parameters": { "binary_data_output": true } });
        let reply = post_binary(&router, &format!("/v2/models/{id}/infer"), &header, &blobs).await;
        let response = unframe(&reply);
        saw_bytes |= response["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["datatype"] == "BYTES" && o["parameters"]["binary_data_size"].is_u64());
        assert_classified(&response, &reference);
    }
    assert!(saw_bytes, "no classifier answered a binary BYTES output");
}
