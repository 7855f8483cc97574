use super::*;
use crate::oip::{validate_inputs, validate_inputs_with};

fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype,
        shape: shape.to_vec(),
    }
}

/// A body under the extension: `json`, then `blobs` in order.
fn body(json: &str, blobs: &[&[u8]]) -> (Bytes, usize) {
    let mut out = json.as_bytes().to_vec();
    for blob in blobs {
        out.extend_from_slice(blob);
    }
    (Bytes::from(out), json.len())
}

fn f32s(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn strings(values: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

fn refused(result: Result<impl std::fmt::Debug, ScorerError>, message: &str) {
    match result {
        Err(ScorerError::InvalidInput(m)) => assert!(m.contains(message), "{m}"),
        other => panic!("expected a 400 with '{message}', got {other:?}"),
    }
}

#[test]
fn the_header_length_is_a_whole_number() {
    assert_eq!(header_length(None).unwrap(), None);
    assert_eq!(header_length(Some(b"12")).unwrap(), Some(12));
    refused(header_length(Some(b"-1")), "whole number");
    refused(header_length(Some(b"1e3")), "whole number");
    refused(
        header_length(Some(b"99999999999999999999999")),
        "whole number",
    );
}

#[test]
fn binary_and_json_inputs_mix_in_order() {
    let specs = [
        spec("x", DataType::Fp32, &[-1, 2]),
        spec("f", DataType::Bool, &[-1, 1]),
        spec("n", DataType::Int64, &[-1, 1]),
    ];
    let json = r#"{"inputs":[
        {"name":"x","shape":[2,2],"datatype":"FP32","parameters":{"binary_data_size":16}},
        {"name":"f","shape":[2,1],"datatype":"BOOL","data":[true,false]},
        {"name":"n","shape":[2,1],"datatype":"INT64","parameters":{"binary_data_size":16}}]}"#;
    let n: Vec<u8> = [7i64, -3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let (b, len) = body(json, &[&f32s(&[1.0, 2.5, -3.0, 4.0]), &n]);
    let (request, blobs) = parse(b, len).unwrap();
    let tensors = validate_inputs_with(request.inputs, blobs.inputs, &specs, 100).unwrap();
    assert_eq!(tensors[0].data, TensorData::Fp32(vec![1.0, 2.5, -3.0, 4.0]));
    assert_eq!(tensors[1].data, TensorData::Bool(vec![true, false]));
    assert_eq!(tensors[2].data, TensorData::Int64(vec![7, -3]));
}

#[test]
fn every_fixed_datatype_decodes_little_endian() {
    let cases: [(DataType, Vec<u8>, TensorData); 5] = [
        (
            DataType::Fp32,
            f32s(&[1.5, -2.0]),
            TensorData::Fp32(vec![1.5, -2.0]),
        ),
        (
            DataType::Fp64,
            [1.25f64, 1e300]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            TensorData::Fp64(vec![1.25, 1e300]),
        ),
        (
            DataType::Int32,
            [i32::MIN, 5].iter().flat_map(|v| v.to_le_bytes()).collect(),
            TensorData::Int32(vec![i32::MIN, 5]),
        ),
        (
            DataType::Int64,
            [i64::MAX, -1]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            TensorData::Int64(vec![i64::MAX, -1]),
        ),
        (
            DataType::Bool,
            vec![1, 0],
            TensorData::Bool(vec![true, false]),
        ),
    ];
    for (datatype, blob, want) in cases {
        assert_eq!(decode("x", datatype, &blob, 2).unwrap(), want);
        let mut again = Vec::new();
        encode(&want, &mut again);
        assert_eq!(again, blob, "{datatype:?} round trip");
        assert_eq!(encoded_len(&want), blob.len());
    }
    refused(decode("x", DataType::Bool, &[1, 2], 2), "a BOOL is 0 or 1");
}

#[test]
fn bytes_elements_are_length_prefixed() {
    let blob = strings(&["yes", "", "naïve"]);
    let data = decode("s", DataType::Bytes, &blob, 3).unwrap();
    assert_eq!(
        data,
        TensorData::Bytes(vec!["yes".into(), String::new(), "naïve".into()])
    );
    let mut again = Vec::new();
    encode(&data, &mut again);
    assert_eq!(again, blob);
    assert_eq!(encoded_len(&data), blob.len());
    assert_eq!(count("BYTES", &blob), 3);
    // A count that lies either way (or bytes left over that are whole elements), a
    // prefix past the end, a cut prefix, bad UTF-8, a NUL.
    refused(
        decode("s", DataType::Bytes, &blob, 4),
        "hold 3 BYTES elements",
    );
    refused(
        decode("s", DataType::Bytes, &blob, 2),
        "hold 3 BYTES elements",
    );
    let mut past = strings(&["ab"]);
    past.extend_from_slice(&u32::MAX.to_le_bytes());
    past.extend_from_slice(b"xy");
    assert_eq!(count("BYTES", &past), 1);
    refused(
        decode("s", DataType::Bytes, &past, 2),
        "element 1 has length 4294967295 (at byte 6) but only 2 bytes",
    );
    let mut past_by_one = strings(&["ab"]);
    past_by_one.extend_from_slice(&3u32.to_le_bytes());
    past_by_one.extend_from_slice(b"xy");
    refused(
        decode("s", DataType::Bytes, &past_by_one, 2),
        "element 1 has length 3 (at byte 6) but only 2 bytes",
    );
    refused(
        decode("s", DataType::Bytes, &[3, 0], 1),
        "element 0: its 4-byte length is cut short (2 bytes at byte 0 of 2)",
    );
    let mut trailing = strings(&["ab"]);
    trailing.extend_from_slice(&[1, 0, 0]);
    refused(
        decode("s", DataType::Bytes, &trailing, 1),
        "element 1: its 4-byte length is cut short (3 bytes at byte 6 of 9)",
    );
    refused(
        decode("s", DataType::Bytes, &strings(&["\u{0}"])[..4], 1),
        "element 0 has length 1 (at byte 0) but only 0 bytes",
    );
    let mut bad = 2u32.to_le_bytes().to_vec();
    bad.extend_from_slice(&[0xff, 0xfe]);
    refused(
        decode("s", DataType::Bytes, &bad, 1),
        "element 0 is not UTF-8",
    );
    refused(
        decode("s", DataType::Bytes, &strings(&["ok", "a\u{0}b"]), 2),
        "element 1 contains a NUL byte",
    );
    // Zero elements: an empty blob, and nothing else.
    assert_eq!(
        decode("s", DataType::Bytes, &[], 0).unwrap(),
        TensorData::Bytes(Vec::new())
    );
    refused(decode("s", DataType::Bytes, &strings(&[""]), 0), "hold 1");
}

#[test]
fn a_bytes_input_goes_binary_beside_json_and_its_count_meets_the_limit() {
    let specs = [
        spec("s", DataType::Bytes, &[-1, 1]),
        spec("x", DataType::Fp32, &[-1, 2]),
    ];
    let json = r#"{"inputs":[{"name":"s","shape":[2,1],"datatype":"BYTES","parameters":{"binary_data_size":15}},{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]}]}"#;
    let blob = strings(&["crème", "b"]);
    let (bytes, length) = body(json, &[&blob]);
    let (request, blobs) = parse(bytes, length).unwrap();
    let tensors = validate_inputs_with(request.inputs, blobs.inputs, &specs, 100).unwrap();
    assert_eq!(
        tensors[0].data,
        TensorData::Bytes(vec!["crème".into(), "b".into()])
    );
    assert_eq!(tensors[1].data, TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0]));
    // Three strings (15 bytes, as "crème" and "b") and four numbers against a limit of
    // 6: refused before decoding.
    let json = json.replace("[2,1]", "[3,1]");
    let blob = strings(&["a", "b", "c"]);
    let (bytes, length) = body(&json, &[&blob]);
    let (request, blobs) = parse(bytes, length).unwrap();
    refused(
        validate_inputs_with(request.inputs, blobs.inputs, &specs, 6),
        "more than the limit of 6",
    );
}

#[test]
fn sizes_that_lie_are_refused_before_decoding() {
    let specs = [spec("x", DataType::Fp32, &[-1, 2])];
    let input = |size: &str| {
        format!(
            r#"{{"inputs":[{{"name":"x","shape":[1,2],"datatype":"FP32","parameters":{{"binary_data_size":{size}}}}}]}}"#
        )
    };
    let blob = f32s(&[1.0, 2.0]);
    // The declared size runs past the body.
    let (b, len) = body(&input("9"), &[&blob]);
    refused(parse(b, len), "only 8 bytes of binary data remain");
    // Bytes left over after the declared sizes.
    let (b, len) = body(&input("4"), &[&blob]);
    refused(parse(b, len), "4 bytes after the inputs' binary data");
    // Huge, negative or non-integer sizes.
    for size in ["18446744073709551615", "1e30", "-8", "\"8\""] {
        let (b, len) = body(&input(size), &[&blob]);
        assert!(parse(b, len).is_err(), "{size}");
    }
    // A consistent size that disagrees with the shape.
    let (b, len) = body(
        r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#,
        &[&blob],
    );
    let (request, blobs) = parse(b, len).unwrap();
    refused(
        validate_inputs_with(request.inputs, blobs.inputs, &specs, 100),
        "binary_data_size 8",
    );
    // A header longer than the body, a header that cuts the JSON.
    let (b, _) = body(&input("8"), &[&blob]);
    refused(parse(b.clone(), b.len() + 1), "only");
    refused(parse(b, 10), "malformed");
    // Both data and a size.
    let (b, len) = body(
        r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2],"parameters":{"binary_data_size":8}}]}"#,
        &[&blob],
    );
    refused(parse(b, len), "both data and binary_data_size");
}

#[test]
fn the_element_limit_counts_binary_elements() {
    let specs = [spec("x", DataType::Fp32, &[-1, 2])];
    let blob = f32s(&[0.0; 8]);
    let (b, len) = body(
        r#"{"inputs":[{"name":"x","shape":[4,2],"datatype":"FP32","parameters":{"binary_data_size":32}}]}"#,
        &[&blob],
    );
    let (request, blobs) = parse(b, len).unwrap();
    refused(
        validate_inputs_with(request.inputs, blobs.inputs, &specs, 7),
        "more than the limit of 7",
    );
}

#[test]
fn a_size_without_the_header_names_the_header() {
    let specs = [spec("x", DataType::Fp32, &[-1, 2])];
    let request = crate::oip::parse_infer_request(
        br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#,
    )
    .unwrap();
    refused(
        validate_inputs(request.inputs, &specs, 100),
        "no Inference-Header-Content-Length",
    );
    let request = crate::oip::parse_infer_request(
        br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32"}]}"#,
    )
    .unwrap();
    refused(
        validate_inputs(request.inputs, &specs, 100),
        "but 0 data values",
    );
}

#[test]
fn a_raw_body_is_the_one_input_with_its_batch_from_the_length() {
    let specs = [spec("x", DataType::Fp32, &[-1, 2])];
    let (mut request, mut blobs) =
        parse(Bytes::from(f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])), 0).unwrap();
    raw_input(&mut request, &mut blobs, &specs).unwrap();
    assert_eq!(binary_outputs(&request, 1).unwrap(), Some(vec![true]));
    let tensors = validate_inputs_with(request.inputs, blobs.inputs, &specs, 100).unwrap();
    assert_eq!(tensors[0].shape, vec![3, 2]);
    // Not a whole row, not a whole element, two inputs, two variable dimensions.
    for (bytes, specs) in [
        (f32s(&[1.0, 2.0, 3.0]), specs.to_vec()),
        (vec![0; 7], specs.to_vec()),
        (
            f32s(&[1.0, 2.0]),
            vec![
                spec("a", DataType::Fp32, &[-1]),
                spec("b", DataType::Fp32, &[-1]),
            ],
        ),
        (
            f32s(&[1.0, 2.0]),
            vec![spec("a", DataType::Fp32, &[-1, -1])],
        ),
        // A BYTES input that holds more than one element.
        (b"ab".to_vec(), vec![spec("a", DataType::Bytes, &[-1, 2])]),
        (b"ab".to_vec(), vec![spec("a", DataType::Bytes, &[3])]),
    ] {
        let (mut request, mut blobs) = parse(Bytes::from(bytes), 0).unwrap();
        assert!(
            raw_input(&mut request, &mut blobs, &specs).is_err(),
            "{specs:?}"
        );
    }
}

#[test]
fn a_raw_body_for_a_bytes_input_is_its_one_element() {
    for shape in [&[1][..], &[-1, 1], &[-1], &[1, -1, 1], &[]] {
        let specs = [spec("s", DataType::Bytes, shape)];
        let (mut request, mut blobs) = parse(Bytes::from("crème brûlée"), 0).unwrap();
        raw_input(&mut request, &mut blobs, &specs).unwrap();
        assert_eq!(binary_outputs(&request, 1).unwrap(), Some(vec![true]));
        let tensors = validate_inputs_with(request.inputs, blobs.inputs, &specs, 100).unwrap();
        assert_eq!(tensors[0].shape, vec![1; shape.len()], "{shape:?}");
        assert_eq!(
            tensors[0].data,
            TensorData::Bytes(vec!["crème brûlée".into()])
        );
    }
    let specs = [spec("s", DataType::Bytes, &[-1, 1])];
    // The body is the element itself: a length prefix in it is part of the text.
    let (mut request, mut blobs) = parse(Bytes::from(strings(&["ab"])), 0).unwrap();
    raw_input(&mut request, &mut blobs, &specs).unwrap();
    refused(
        validate_inputs_with(request.inputs, blobs.inputs, &specs, 100),
        "element 0 contains a NUL byte",
    );
    let (mut request, mut blobs) = parse(Bytes::from_static(&[0xc3, 0x28]), 0).unwrap();
    raw_input(&mut request, &mut blobs, &specs).unwrap();
    refused(
        validate_inputs_with(request.inputs, blobs.inputs, &specs, 100),
        "element 0 is not UTF-8",
    );
    // An empty body is one empty string.
    let (mut request, mut blobs) = parse(Bytes::new(), 0).unwrap();
    raw_input(&mut request, &mut blobs, &specs).unwrap();
    let tensors = validate_inputs_with(request.inputs, blobs.inputs, &specs, 100).unwrap();
    assert_eq!(tensors[0].data, TensorData::Bytes(vec![String::new()]));
    let (mut request, mut blobs) = parse(Bytes::from("ab"), 0).unwrap();
    refused(
        raw_input(
            &mut request,
            &mut blobs,
            &[spec("s", DataType::Bytes, &[-1, 2])],
        ),
        "carries one BYTES element (the whole body), but the model's input 's' has shape [-1, 2]",
    );
}

#[test]
fn output_modes_follow_the_request_and_each_output_wins() {
    let request = |json: &str| crate::oip::parse_infer_request(json.as_bytes()).unwrap();
    assert_eq!(
        binary_outputs(&request(r#"{"inputs":[]}"#), 2).unwrap(),
        None
    );
    assert_eq!(
        binary_outputs(
            &request(r#"{"inputs":[],"parameters":{"binary_data_output":true}}"#),
            2
        )
        .unwrap(),
        Some(vec![true, true])
    );
    let r = request(
        r#"{"inputs":[],"parameters":{"binary_data_output":true},
            "outputs":[{"name":"a","parameters":{"binary_data":false}},{"name":"b"}]}"#,
    );
    assert_eq!(binary_outputs(&r, 2).unwrap(), Some(vec![false, true]));
    let r = request(r#"{"inputs":[],"outputs":[{"name":"a","parameters":{"binary_data":false}}]}"#);
    assert_eq!(binary_outputs(&r, 1).unwrap(), None);
    let r = request(r#"{"inputs":[],"parameters":{"binary_data_output":1}}"#);
    refused(binary_outputs(&r, 1), "expected true or false");
}

#[test]
fn a_binary_response_is_a_header_then_the_blobs() {
    let outputs = [
        NamedTensor {
            name: "label".into(),
            datatype: DataType::Bytes,
            shape: vec![2],
            data: TensorData::Bytes(vec!["yes".into(), "no".into()]),
        },
        NamedTensor {
            name: "p".into(),
            datatype: DataType::Fp32,
            shape: vec![2, 1],
            data: TensorData::Fp32(vec![0.5, 0.25]),
        },
    ];
    let (body, length) = response("m", "1", Some("r"), &outputs, &[true, false]).unwrap();
    let header: Value = serde_json::from_slice(&body[..length]).unwrap();
    assert_eq!(header["id"], "r");
    assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 13);
    assert!(header["outputs"][0].get("data").is_none());
    assert_eq!(header["outputs"][1]["data"], serde_json::json!([0.5, 0.25]));
    assert_eq!(&body[length..], strings(&["yes", "no"]).as_slice());
}
