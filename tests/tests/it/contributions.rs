//! Explanations end to end, through a real proxy in front of a real scorer, on real
//! exports of the corpus (`models/corpus`, covers in `nodes_hitrates`): the request
//! parameter `contributions` over REST (JSON and the binary extension) and gRPC, a
//! record's `contributions` on the many-model route, each answer equal to the reference
//! implementation's committed contributions (`models/corpus/contributions/`, within
//! `1e-5 × max(1, |reference|)`), and a clear 422 for models that cannot be explained.

use manymodels_tests::grpc::{connect, outputs_json, pb, routed};
use manymodels_tests::process::{Pool, metric_total};
use manymodels_tests::{TempDir, post_json, root};
use serde_json::{Value, json};

/// The corpus models of the test, published as version 1 of `id`.
const MODELS: [(&str, &str); 5] = [
    ("rf-reg", "skl_rf_reg"),
    ("lgbm-multi", "lgbm_multi"),
    ("logreg", "skl_logreg_bin"),
    ("lgbm-cat", "lgbm_reg_cat"),
    ("linreg-f64", "skl_linreg_f64"),
];

fn store() -> TempDir {
    let store = TempDir::new("contributions");
    for (id, file) in MODELS {
        let dir = store.path().join(id).join("1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            root().join(format!("models/corpus/{file}.onnx")),
            dir.join("model.onnx"),
        )
        .unwrap();
    }
    store
}

fn reference(file: &str) -> Value {
    let path = root().join(format!("models/corpus/contributions/{file}.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect()
}

fn output<'a>(outputs: &'a Value, name: &str) -> &'a Value {
    outputs
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {outputs}"))
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-5 * want.abs().max(1.0)
}

/// Checks an answer's three explanation outputs (OIP JSON) against `file`'s reference for
/// its first `rows` rows.
fn check_against_reference(outputs: &Value, file: &str, rows: usize) {
    let reference = reference(file);
    let c = output(outputs, "contributions");
    assert_eq!(c["datatype"], "FP64");
    let shape: Vec<usize> = numbers(&c["shape"]).iter().map(|&d| d as usize).collect();
    let (targets, features) = (shape[1], shape[2]);
    assert_eq!(shape[0], rows);
    let values = numbers(&c["data"]);
    let expected = numbers(&output(outputs, "expected_value")["data"]);
    let raw = numbers(&output(outputs, "raw_output")["data"]);
    for r in 0..rows {
        for k in 0..targets {
            let at = (r * targets + k) * features;
            let sum = expected[k] + values[at..at + features].iter().sum::<f64>();
            assert!(
                close(sum, raw[r * targets + k]),
                "{file} row {r}: sum {sum}"
            );
        }
    }
    for out in reference["outputs"].as_array().unwrap() {
        let k = out["target"].as_u64().unwrap() as usize;
        let sign = out["sign"].as_f64().unwrap();
        assert!(close(
            sign * expected[k],
            out["expected_value"].as_f64().unwrap()
        ));
        for r in 0..rows {
            let want = numbers(&out["contributions"][r]);
            for (f, w) in want.iter().enumerate() {
                let got = sign * values[(r * targets + k) * features + f];
                assert!(
                    close(got, *w),
                    "{file} row {r} target {k} feature {f}: {got} vs {w}"
                );
            }
        }
    }
}

/// The reference's rows as an OIP input (NaN is `null` in the file; these rows have none
/// for the models used here).
fn oip_input(file: &str, rows: usize) -> Value {
    let reference = reference(file);
    let data: Vec<Vec<f64>> = reference["rows"].as_array().unwrap()[..rows]
        .iter()
        .map(numbers)
        .collect();
    let width = data[0].len();
    json!({"name": "input", "datatype": "FP32", "shape": [rows, width], "data": data})
}

/// `id`'s metadata (`GET /v2/models/{id}`).
async fn metadata(client: &reqwest::Client, url: &str, id: &str) -> Value {
    client
        .get(format!("{url}/v2/models/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The name of `id`'s one input, from its metadata.
async fn input_name(client: &reqwest::Client, url: &str, id: &str) -> String {
    metadata(client, url, id).await["inputs"][0]["name"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn contributions_over_rest_grpc_and_records_equal_the_references() {
    let store = store();
    let pool = Pool::local(store.path(), 1, &[], &[]);
    let client = reqwest::Client::new();
    let url = &pool.proxy.url;
    for (id, file) in &MODELS[..3] {
        let meta = metadata(&client, url, id).await;
        assert_eq!(meta["explanations"]["available"], true, "{meta}");
        let mut input = oip_input(file, 6);
        input["name"] = json!(input_name(&client, url, id).await);
        // REST, OIP JSON.
        let (status, body) = post_json(
            &client,
            &format!("{url}/v2/models/{id}/infer"),
            &json!({"inputs": [input.clone()], "parameters": {"contributions": true}}),
        )
        .await;
        assert_eq!(status, 200, "{id}: {body}");
        // The prediction is still there, first, as without the parameter.
        let (_, plain) = post_json(
            &client,
            &format!("{url}/v2/models/{id}/infer"),
            &json!({"inputs": [input.clone()]}),
        )
        .await;
        let n = plain["outputs"].as_array().unwrap().len();
        assert_eq!(
            body["outputs"].as_array().unwrap()[..n],
            plain["outputs"].as_array().unwrap()[..]
        );
        assert_eq!(body["outputs"].as_array().unwrap().len(), n + 3);
        check_against_reference(&body["outputs"], file, 6);

        // gRPC, straight to the proxy.
        let mut grpc = connect(pool.proxy.addr()).await;
        let mut request = manymodels_tests::grpc::infer_request(id, &json!([input.clone()]), true);
        request.parameters.insert(
            "contributions".into(),
            pb::InferParameter {
                parameter_choice: Some(pb::infer_parameter::ParameterChoice::BoolParam(true)),
            },
        );
        let answer = grpc
            .model_infer(routed(id, request))
            .await
            .unwrap_or_else(|e| panic!("{id} over gRPC: {e}"))
            .into_inner();
        check_against_reference(&outputs_json(&answer), file, 6);
    }

    // The many-model route: explained records beside plain ones, each answered alone.
    let rows = |file: &str| -> Vec<Vec<f64>> {
        reference(file)["rows"].as_array().unwrap()[..2]
            .iter()
            .map(numbers)
            .collect()
    };
    let mut records = Vec::new();
    for (id, file) in &MODELS[..3] {
        for row in rows(file) {
            records.push(json!({"model": id, "features": row, "contributions": true}));
            records.push(json!({"model": id, "features": row}));
        }
    }
    records.push(json!({"model": "lgbm-cat", "features": vec![0.5; 6], "contributions": true}));
    let (status, body) = post_json(
        &client,
        &format!("{url}/v2/mm/batch"),
        &json!({"records": records}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    for (m, (id, file)) in MODELS[..3].iter().enumerate() {
        let reference = reference(file);
        for r in 0..2 {
            let explained = &results[m * 4 + r * 2];
            let plain = &results[m * 4 + r * 2 + 1];
            assert_eq!(explained["model"], *id);
            assert!(plain["outputs"].get("contributions").is_none(), "{plain}");
            let values = numbers(&explained["outputs"]["contributions"]);
            let features = numbers(&reference["rows"][r]).len();
            for out in reference["outputs"].as_array().unwrap() {
                let k = out["target"].as_u64().unwrap() as usize;
                let sign = out["sign"].as_f64().unwrap();
                for (f, w) in numbers(&out["contributions"][r]).iter().enumerate() {
                    let got = sign * values[k * features + f];
                    assert!(close(got, *w), "batch {id} row {r}: {got} vs {w}");
                }
            }
        }
    }
    // A model without covers fails its record alone, with the reason.
    let last = results.last().unwrap();
    assert_eq!(last["status"], 422, "{last}");
    assert!(
        last["error"].as_str().unwrap().contains("nodes_hitrates"),
        "{last}"
    );
    assert_eq!(body["failed"], 1);

    let explained = metric_total(
        &pool.scorers,
        "mm_scorer_explanations_total{outcome=\"explained\"}",
    )
    .await;
    assert!(explained >= 7.0, "{explained}");
}

#[tokio::test]
async fn models_that_cannot_be_explained_answer_422_and_the_scorer_keeps_serving() {
    let store = store();
    let pool = Pool::local(store.path(), 1, &[], &[]);
    let client = reqwest::Client::new();
    let url = &pool.proxy.url;
    for (id, why) in [
        ("lgbm-cat", "nodes_hitrates"),
        ("linreg-f64", "ONNX Runtime"),
    ] {
        let name = input_name(&client, url, id).await;
        let meta = metadata(&client, url, id).await;
        // The metadata says so before anyone asks.
        assert_eq!(meta["explanations"]["available"], false, "{meta}");
        assert!(
            meta["explanations"]["reason"]
                .as_str()
                .unwrap()
                .contains(why),
            "{meta}"
        );
        let width = meta["inputs"][0]["shape"][1].as_i64().unwrap().max(1) as usize;
        let datatype = meta["inputs"][0]["datatype"].as_str().unwrap().to_string();
        let input = json!({"name": name, "datatype": datatype, "shape": [1, width], "data": vec![0.5; width]});
        let (status, body) = post_json(
            &client,
            &format!("{url}/v2/models/{id}/infer"),
            &json!({"inputs": [input.clone()], "parameters": {"contributions": true}}),
        )
        .await;
        assert_eq!(status, 422, "{id}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(why),
            "{id}: {body}"
        );
        // Without the parameter the model answers.
        let (status, body) = post_json(
            &client,
            &format!("{url}/v2/models/{id}/infer"),
            &json!({"inputs": [input.clone()]}),
        )
        .await;
        assert_eq!(status, 200, "{id}: {body}");
    }
    // A parameter of the wrong type is the client's error.
    let input = oip_input("skl_rf_reg", 1);
    let (status, body) = post_json(
        &client,
        &format!("{url}/v2/models/rf-reg/infer"),
        &json!({"inputs": [input], "parameters": {"contributions": "yes"}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("contributions"),
        "{body}"
    );
}
