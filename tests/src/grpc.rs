//! A gRPC client of the Open Inference Protocol (`manymodels-grpc`'s generated one), and
//! the conversions between reference JSON and gRPC messages: requests with tensors in
//! `raw_input_contents` (what Triton's client sends) or typed `contents`, and responses
//! read back into the JSON shape `reference::assert_outputs_equal` compares.

use manymodels_grpc::grpc_inference_service_client::GrpcInferenceServiceClient;
use manymodels_grpc::model_infer_request::InferInputTensor;
use manymodels_grpc::{InferTensorContents, ModelInferRequest, ModelInferResponse};
use serde_json::{Value, json};
use tonic::transport::Channel;

pub use manymodels_grpc as pb;

/// A client of `addr` (`host:port`), taking answers of any size.
pub async fn connect(addr: &str) -> GrpcInferenceServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a valid address")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    GrpcInferenceServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// `request` with the model-routing metadata header the proxy reads.
pub fn routed<T>(model: &str, request: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(request);
    request
        .metadata_mut()
        .insert("mm-model-id", model.parse().expect("an ASCII model id"));
    request
}

fn flat(value: &Value, out: &mut Vec<Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flat(v, out)),
        other => out.push(other.clone()),
    }
}

/// A reference input's data, flattened row-major, as little-endian bytes of its datatype.
pub fn raw_bytes(input: &Value) -> Vec<u8> {
    let mut values = Vec::new();
    flat(&input["data"], &mut values);
    let mut out = Vec::new();
    for value in &values {
        match input["datatype"].as_str().expect("datatype") {
            "FP32" => out.extend((value.as_f64().unwrap() as f32).to_le_bytes()),
            "FP64" => out.extend(value.as_f64().unwrap().to_le_bytes()),
            "INT32" => out.extend((value.as_i64().unwrap() as i32).to_le_bytes()),
            "INT64" => out.extend(value.as_i64().unwrap().to_le_bytes()),
            "BOOL" => out.push(u8::from(value.as_bool().unwrap())),
            "BYTES" => {
                let text = value.as_str().unwrap();
                out.extend((text.len() as u32).to_le_bytes());
                out.extend(text.as_bytes());
            }
            other => panic!("datatype {other}"),
        }
    }
    out
}

/// A reference input's data as typed `contents`.
pub fn typed_contents(input: &Value) -> InferTensorContents {
    let mut values = Vec::new();
    flat(&input["data"], &mut values);
    let mut contents = InferTensorContents::default();
    for value in &values {
        match input["datatype"].as_str().expect("datatype") {
            "FP32" => contents.fp32_contents.push(value.as_f64().unwrap() as f32),
            "FP64" => contents.fp64_contents.push(value.as_f64().unwrap()),
            "INT32" => contents.int_contents.push(value.as_i64().unwrap() as i32),
            "INT64" => contents.int64_contents.push(value.as_i64().unwrap()),
            "BOOL" => contents.bool_contents.push(value.as_bool().unwrap()),
            "BYTES" => contents
                .bytes_contents
                .push(value.as_str().unwrap().as_bytes().to_vec().into()),
            other => panic!("datatype {other}"),
        }
    }
    contents
}

/// The infer request of a reference entry (`inputs` as in reference.json): raw tensors
/// when `raw`, typed contents otherwise.
pub fn infer_request(model: &str, inputs: &Value, raw: bool) -> ModelInferRequest {
    let inputs = inputs.as_array().expect("inputs");
    ModelInferRequest {
        model_name: model.to_string(),
        id: "ref".to_string(),
        inputs: inputs
            .iter()
            .map(|input| InferInputTensor {
                name: input["name"].as_str().unwrap().to_string(),
                datatype: input["datatype"].as_str().unwrap().to_string(),
                shape: input["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_i64().unwrap())
                    .collect(),
                parameters: Default::default(),
                contents: (!raw).then(|| typed_contents(input)),
            })
            .collect(),
        raw_input_contents: if raw {
            inputs.iter().map(|i| raw_bytes(i).into()).collect()
        } else {
            Vec::new()
        },
        ..Default::default()
    }
}

/// A response's outputs as OIP JSON (`[{name, datatype, shape, data}]`), decoded from
/// `raw_output_contents`.
pub fn outputs_json(response: &ModelInferResponse) -> Value {
    assert_eq!(
        response.outputs.len(),
        response.raw_output_contents.len(),
        "one raw_output_contents entry per output"
    );
    let outputs: Vec<Value> = response
        .outputs
        .iter()
        .zip(&response.raw_output_contents)
        .map(|(output, raw)| {
            let data: Vec<Value> = match output.datatype.as_str() {
                "FP32" => raw
                    .chunks_exact(4)
                    .map(|c| json!(f32::from_le_bytes(c.try_into().unwrap())))
                    .collect(),
                "FP64" => raw
                    .chunks_exact(8)
                    .map(|c| json!(f64::from_le_bytes(c.try_into().unwrap())))
                    .collect(),
                "INT32" => raw
                    .chunks_exact(4)
                    .map(|c| json!(i32::from_le_bytes(c.try_into().unwrap())))
                    .collect(),
                "INT64" => raw
                    .chunks_exact(8)
                    .map(|c| json!(i64::from_le_bytes(c.try_into().unwrap())))
                    .collect(),
                "BOOL" => raw.iter().map(|b| json!(*b != 0)).collect(),
                "BYTES" => {
                    let mut rest = &raw[..];
                    let mut items = Vec::new();
                    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
                        let len = u32::from_le_bytes(*len) as usize;
                        items.push(json!(String::from_utf8_lossy(&tail[..len])));
                        rest = &tail[len..];
                    }
                    items
                }
                other => panic!("datatype {other}"),
            };
            json!({
                "name": output.name,
                "datatype": output.datatype,
                "shape": output.shape,
                "data": data,
            })
        })
        .collect();
    Value::Array(outputs)
}
