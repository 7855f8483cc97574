//! BYTES (string) inputs: a classifier whose input is a string column
//! (`zipmap-onehot-str-input` in `models/classifiers`: a one-hot encoder into a logistic
//! regression, exported by skl2onnx with `StringTensorType([None, 1])`), scored from JSON
//! strings, binary length-prefixed strings and the raw single-input form, and compared
//! with Python onnxruntime's answers (labels exactly, probabilities within
//! `PROBABILITY_TOLERANCE`, 1e-6). Every way a string input can be wrong is a 400 whose
//! `error` names the input and the element.

use manymodels_tests::classifiers::{
    assert_classes_in_metadata, assert_classified, classifier_reference, classifier_store,
};

use super::binary::{encode, post_binary, post_framed, unframe};
use super::*;

const URI: &str = "/v2/models/zipmap-onehot-str-input/infer";

/// The reference of the string-input classifier: six colours, among them "crème" (not
/// ASCII) and two the encoder never saw ("ultraviolet", "").
fn string_reference() -> Value {
    classifier_reference()
        .into_iter()
        .find(|r| r["id"] == "zipmap-onehot-str-input")
        .expect("models/classifiers/reference.json has the string-input classifier")
}

/// The reference cut to its row `r`: one string in, one label and one row of
/// probabilities out.
fn row(reference: &Value, r: usize) -> Value {
    let mut one = reference.clone();
    let input = &mut one["inputs"][0];
    input["shape"] = json!([1, 1]);
    input["data"] = json!([reference["inputs"][0]["data"][r]]);
    for output in one["outputs"].as_array_mut().unwrap() {
        let shape = output["shape"].as_array().unwrap().clone();
        let width = if shape.len() == 2 {
            shape[1].as_u64().unwrap() as usize
        } else {
            1
        };
        let data = output["data"].as_array().unwrap()[r * width..(r + 1) * width].to_vec();
        output["data"] = Value::Array(data);
        output["shape"][0] = json!(1);
    }
    one
}

/// The router of a scorer on the classifier store.
fn classifier_router(native: NativeEngine) -> Router {
    scorer_for(&classifier_store(), |c| c.native_engine = native).1
}

/// A binary request with the reference's strings as the one binary input.
fn binary_header(reference: &Value, blob: &[u8], outputs_binary: bool) -> Value {
    let input = &reference["inputs"][0];
    json!({
        "inputs": [{
            "name": input["name"], "shape": input["shape"], "datatype": "BYTES",
            "parameters": { "binary_data_size": blob.len() },
        }],
        "parameters": { "binary_data_output": outputs_binary },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_strings_answer_python_onnxruntimes_labels_and_probabilities() {
    let reference = string_reference();
    assert_eq!(reference["inputs"][0]["datatype"], "BYTES");
    // The native engine takes numeric inputs only: with it on or off, ONNX Runtime serves.
    for native in [NativeEngine::Auto, NativeEngine::Off] {
        let router = classifier_router(native);
        let reply = post_json(&router, URI, &inputs_body(&reference)).await;
        assert_classified(&reply.ok(), &reference);

        // Nested rows are flattened row-major, like numbers.
        let mut nested = inputs_body(&reference);
        let rows: Vec<Value> = reference["inputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| json!([s]))
            .collect();
        nested["inputs"][0]["data"] = Value::Array(rows);
        let reply = post_json(&router, URI, &nested).await;
        assert_classified(&reply.ok(), &reference);

        // Escaped JSON is the same text: "cr\u00e8me" is "crème".
        let escaped = r#"{"inputs":[{"name":"input","shape":[1,1],"datatype":"BYTES","data":["cr\u00e8me"]}]}"#;
        let reply = post_raw(&router, URI, escaped).await;
        assert_eq!(reference["inputs"][0]["data"][2], "crème");
        assert_classified(&reply.ok(), &row(&reference, 2));

        // An empty batch is an empty answer, as for numbers.
        let empty = json!({"inputs": [{"name": "input", "shape": [0, 1], "datatype": "BYTES",
                                       "data": []}]});
        let reply = post_json(&router, URI, &empty).await.ok();
        assert_eq!(reply["outputs"][0]["shape"], json!([0]), "{reply}");
        assert_eq!(reply["outputs"][0]["data"], json!([]), "{reply}");

        let metadata = get(&router, "/v2/models/zipmap-onehot-str-input")
            .await
            .ok();
        assert_eq!(
            metadata["inputs"],
            json!([{ "name": "input", "datatype": "BYTES", "shape": [-1, 1] }]),
            "{metadata}"
        );
        assert_eq!(metadata["engine"], "onnxruntime", "{metadata}");
        assert_classes_in_metadata(&metadata, &reference);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unseen_categories_score_as_the_encoders_all_zero_row() {
    // "ultraviolet" and "" were never seen: `handle_unknown='ignore'` encodes both as
    // zeros, so both get the intercepts' probabilities, and the same ones.
    let reference = string_reference();
    let data = &reference["inputs"][0]["data"];
    assert_eq!(
        (data[3].as_str(), data[5].as_str()),
        (Some("ultraviolet"), Some(""))
    );
    let router = classifier_router(NativeEngine::Auto);
    let ultraviolet = post_json(&router, URI, &inputs_body(&row(&reference, 3)))
        .await
        .ok();
    let empty = post_json(&router, URI, &inputs_body(&row(&reference, 5)))
        .await
        .ok();
    assert_classified(&ultraviolet, &row(&reference, 3));
    assert_classified(&empty, &row(&reference, 5));
    assert_eq!(ultraviolet["outputs"], empty["outputs"]);
    // And a seen colour does not score like them.
    let red = post_json(&router, URI, &inputs_body(&row(&reference, 0)))
        .await
        .ok();
    assert_ne!(red["outputs"], empty["outputs"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_length_prefixed_strings_answer_the_reference() {
    let reference = string_reference();
    let router = classifier_router(NativeEngine::Auto);
    let blob = encode("BYTES", &reference["inputs"][0]["data"]);
    // Six strings of 3 + 4 + 6 + 11 + 5 + 0 bytes ("crème" is six in UTF-8), each after
    // its 4-byte length.
    assert_eq!(blob.len(), 6 * 4 + 29);
    for outputs_binary in [false, true] {
        let header = binary_header(&reference, &blob, outputs_binary);
        let reply = post_binary(&router, URI, &header, std::slice::from_ref(&blob)).await;
        let response = if outputs_binary {
            unframe(&reply)
        } else {
            reply.ok()
        };
        assert_classified(&response, &reference);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_body_is_one_string_and_answers_binary() {
    let reference = string_reference();
    let router = classifier_router(NativeEngine::Auto);
    let data = reference["inputs"][0]["data"].as_array().unwrap().clone();
    for (r, text) in data.iter().enumerate() {
        // The whole body is the string: no length prefix, no JSON.
        let body = text.as_str().unwrap().as_bytes().to_vec();
        let reply = post_framed(&router, URI, 0, body).await;
        assert_classified(&unframe(&reply), &row(&reference, r));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_string_where_a_number_belongs_and_a_number_where_a_string_belongs_are_400s() {
    let router = scorer_for(&classifier_store(), |_| {}).1;
    let cases = [
        (
            URI,
            json!({"inputs": [{"name": "input", "shape": [3, 1], "datatype": "BYTES",
                               "data": ["red", 7, "blue"]}]}),
            "input 'input' element 1 is 7 but the datatype is BYTES",
        ),
        (
            URI,
            json!({"inputs": [{"name": "input", "shape": [1, 1], "datatype": "BYTES",
                               "data": [[false]]}]}),
            "input 'input' element 0 is false but the datatype is BYTES",
        ),
        (
            URI,
            json!({"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP32",
                               "data": [1.5]}]}),
            "input 'input' has datatype FP32 but the model expects BYTES",
        ),
        (
            URI,
            json!({"inputs": [{"name": "input", "shape": [2, 1], "datatype": "BYTES",
                               "data": ["red"]}]}),
            "(2 elements) but 1 data values",
        ),
        (
            URI,
            json!({"inputs": [{"name": "input", "shape": [1, 1], "datatype": "BYTES",
                               "data": ["re\u{0}d"]}]}),
            "input 'input' element 0 contains a NUL byte",
        ),
        (
            "/v2/models/zipmap-logreg-int/infer",
            json!({"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32",
                               "data": [0.1, 0.2, 0.3, 0.4, 0.5, "0.6"]}]}),
            r#"input 'input' element 5 is the string "0.6" but the datatype is FP32"#,
        ),
    ];
    for (uri, body, message) in cases {
        post_json(&router, uri, &body)
            .await
            .assert_error(StatusCode::BAD_REQUEST, message);
    }
    // The model still answers afterwards: nothing above reached it.
    let reference = string_reference();
    let reply = post_json(&router, URI, &inputs_body(&reference)).await;
    assert_classified(&reply.ok(), &reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_binary_strings_are_400s_that_say_which_element() {
    let reference = string_reference();
    let router = classifier_router(NativeEngine::Auto);
    let prefixed = |parts: &[&[u8]]| -> Vec<u8> {
        let mut out = Vec::new();
        for part in parts {
            out.extend((part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
        out
    };
    let with = |mut blob: Vec<u8>, extra: &[u8]| {
        blob.extend_from_slice(extra);
        blob
    };
    // (rows the shape says, the blob, what the error says)
    let cases: Vec<(u64, Vec<u8>, &str)> = vec![
        // A length cut short: two of its four bytes.
        (
            1,
            vec![3, 0],
            "input 'input' element 0: its 4-byte length is cut short (2 bytes at byte 0 of 2)",
        ),
        // A length past the end of the input's data.
        (
            1,
            with(10u32.to_le_bytes().to_vec(), b"abc"),
            "input 'input' element 0 has length 10 (at byte 0) but only 3 bytes",
        ),
        // Bytes after the last whole element.
        (
            1,
            with(prefixed(&[b"red"]), &[9, 9]),
            "input 'input' element 1: its 4-byte length is cut short (2 bytes at byte 7 of 9)",
        ),
        // More elements than the shape says, and fewer.
        (
            1,
            prefixed(&[b"red", b"blue"]),
            "input 'input' has 1 elements by its shape but its 15 bytes of binary data hold 2",
        ),
        (
            3,
            prefixed(&[b"red", b"blue"]),
            "input 'input' has 3 elements by its shape but its 15 bytes of binary data hold 2",
        ),
        // Not UTF-8 (a lone continuation byte), and a NUL inside an element.
        (
            2,
            prefixed(&[b"red", &[0x80]]),
            "input 'input' element 1 is not UTF-8",
        ),
        (
            2,
            prefixed(&[b"red", b"bl\0ue"]),
            "input 'input' element 1 contains a NUL byte",
        ),
    ];
    for (rows, blob, message) in cases {
        let mut header = binary_header(&reference, &blob, false);
        header["inputs"][0]["shape"] = json!([rows, 1]);
        post_binary(&router, URI, &header, &[blob])
            .await
            .assert_error(StatusCode::BAD_REQUEST, message);
    }
    // A binary_data_size past the body is refused at the framing.
    let blob = prefixed(&[b"red"]);
    let mut header = binary_header(&reference, &blob, false);
    header["inputs"][0]["shape"] = json!([1, 1]);
    header["inputs"][0]["parameters"]["binary_data_size"] = json!(blob.len() + 1);
    post_binary(&router, URI, &header, &[blob])
        .await
        .assert_error(
            StatusCode::BAD_REQUEST,
            "binary_data_size 8 but only 7 bytes",
        );
    // A raw body that is not UTF-8, or holds a NUL.
    for (body, message) in [
        (vec![b'r', 0xff], "input 'input' element 0 is not UTF-8"),
        (
            b"r\0d".to_vec(),
            "input 'input' element 0 contains a NUL byte",
        ),
    ] {
        post_framed(&router, URI, 0, body)
            .await
            .assert_error(StatusCode::BAD_REQUEST, message);
    }
}
