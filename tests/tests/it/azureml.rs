//! `mm-proxy` in front of two `mm-scorer` processes, sent requests shaped as an Azure ML
//! online endpoint (scoring route `/`) forwards them: the model id in the path
//! (`<scoring_uri minus /score>/v2/models/{id}/infer`, or appended to the whole scoring URI),
//! the headers the endpoint adds, and the body shapes Azure ML clients send
//! (`input_data` as a split DataFrame or a list of rows, `data` as a list of rows), answered
//! as a list of predictions and compared with the demo models' reference outputs.

use manymodels_tests::process::Pool;
use manymodels_tests::{
    TOLERANCE, assert_outputs_match, demo_reference, infer_body, post_json, reference::close, root,
};
use serde_json::{Value, json};

fn pool() -> Pool {
    Pool::local(&root().join("models/demo"), 2, &[], &[])
}

/// The reference entries of the demo models with one input (the ones Azure ML bodies fit).
fn single_input_models() -> Vec<Value> {
    let models: Vec<Value> = demo_reference()
        .into_iter()
        .filter(|m| m["inputs"].as_array().unwrap().len() == 1)
        .collect();
    assert!(
        models.len() >= 5,
        "demo models with one input: {}",
        models.len()
    );
    models
}

/// A reference entry's only input as rows.
fn rows(reference: &Value) -> Vec<Value> {
    let input = &reference["inputs"][0];
    let columns = input["shape"][1].as_u64().unwrap() as usize;
    input["data"]
        .as_array()
        .unwrap()
        .chunks(columns)
        .map(|row| Value::Array(row.to_vec()))
        .collect()
}

/// The three Azure ML body forms for a reference entry's rows.
fn azure_ml_bodies(reference: &Value) -> Vec<(&'static str, Value)> {
    let rows = rows(reference);
    let columns: Vec<String> = (0..rows[0].as_array().unwrap().len())
        .map(|c| format!("f{c}"))
        .collect();
    let index: Vec<usize> = (0..rows.len()).collect();
    vec![
        (
            "input_data split frame",
            json!({"input_data": {"columns": columns, "index": index, "data": rows}}),
        ),
        ("input_data rows", json!({"input_data": rows})),
        ("data rows", json!({"data": rows})),
    ]
}

/// What an Azure ML body's answer should be, from the reference outputs: per output one
/// entry per row (a value, or the row's list of values); the list itself for one output,
/// an object by output name for several.
fn expected_answer(reference: &Value) -> Value {
    let per_row = |output: &Value| {
        let data = output["data"].as_array().unwrap();
        let rows = output["shape"][0].as_u64().unwrap() as usize;
        let width = data.len() / rows;
        if width == 1 {
            Value::Array(data.clone())
        } else {
            data.chunks(width)
                .map(|row| Value::Array(row.to_vec()))
                .collect()
        }
    };
    let outputs = reference["outputs"].as_array().unwrap();
    match outputs.as_slice() {
        [only] => per_row(only),
        _ => outputs
            .iter()
            .map(|o| (o["name"].as_str().unwrap().to_string(), per_row(o)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

/// `got` equals `want`, numbers within `TOLERANCE`.
fn assert_close(context: &str, got: &Value, want: &Value) {
    match (got, want) {
        (Value::Number(g), Value::Number(w)) => {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            assert!(close(g, w, TOLERANCE), "{context}: got {g}, want {w}");
        }
        (Value::Array(g), Value::Array(w)) => {
            assert_eq!(g.len(), w.len(), "{context}: got {got}, want {want}");
            for (i, (g, w)) in g.iter().zip(w).enumerate() {
                assert_close(&format!("{context}[{i}]"), g, w);
            }
        }
        (Value::Object(g), Value::Object(w)) => {
            assert_eq!(
                g.keys().collect::<Vec<_>>(),
                w.keys().collect::<Vec<_>>(),
                "{context}"
            );
            for (key, w) in w {
                assert_close(&format!("{context}.{key}"), &g[key], w);
            }
        }
        _ => assert_eq!(got, want, "{context}"),
    }
}

/// POSTs `body` to `path` with the headers an Azure ML endpoint forwards (and, when given,
/// `x-mm-model`); returns the status, the echoed request ids and the JSON body.
async fn post_as_endpoint(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    model_header: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut request = client
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .header("azureml-model-deployment", "proxy")
        .header("x-request-id", "aml-req-1")
        .header("x-ms-client-request-id", "aml-client-1")
        .json(body);
    if let Some(model) = model_header {
        request = request.header("x-mm-model", model);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    assert_eq!(response.headers()["x-request-id"], "aml-req-1", "{path}");
    assert_eq!(
        response.headers()["x-ms-client-request-id"],
        "aml-client-1",
        "{path}"
    );
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: {text:?}"));
    (status, value)
}

#[tokio::test]
async fn the_model_id_in_the_path_works_as_the_endpoint_forwards_it() {
    let pool = pool();
    let client = reqwest::Client::new();
    for reference in demo_reference() {
        let id = reference["id"].as_str().unwrap();
        // The scoring URI without `/score` plus the OIP path arrives as the OIP path; the
        // whole scoring URI plus the OIP path arrives under `/score`. An `x-mm-model`
        // naming another model does not override the path.
        for (path, header) in [
            (format!("/v2/models/{id}/infer"), None),
            (format!("/score/v2/models/{id}/infer"), None),
            (
                format!("/v2/models/{id}/versions/1/infer"),
                Some("linear-small"),
            ),
        ] {
            let (status, body) = post_as_endpoint(
                &client,
                &pool.proxy.url,
                &path,
                header,
                &infer_body(&reference),
            )
            .await;
            assert_eq!(status, 200, "{path}: {body}");
            assert_eq!(body["model_name"], id, "{path}");
            assert_outputs_match(&body, &reference, TOLERANCE);
        }
    }
    // Readiness and metadata are reachable the same way.
    let ready = client
        .get(format!(
            "{}/score/v2/models/linear-small/ready",
            pool.proxy.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
}

#[tokio::test]
async fn azure_ml_bodies_score_through_every_scoring_route() {
    let pool = pool();
    let client = reqwest::Client::new();
    for reference in single_input_models() {
        let id = reference["id"].as_str().unwrap();
        let want = expected_answer(&reference);
        let routes = [
            (format!("/v2/models/{id}/infer"), None),
            (format!("/score/v2/models/{id}/infer"), None),
            ("/".to_string(), Some(id)),
            ("/score".to_string(), Some(id)),
        ];
        for (form, body) in azure_ml_bodies(&reference) {
            for (path, header) in &routes {
                let (status, got) =
                    post_as_endpoint(&client, &pool.proxy.url, path, *header, &body).await;
                let context = format!("{id} {form} via {path}");
                assert_eq!(status, 200, "{context}: {got}");
                assert_close(&context, &got, &want);
            }
        }
    }
}

#[tokio::test]
async fn azure_ml_bodies_that_do_not_fit_are_refused_with_the_reason() {
    let pool = pool();
    let client = reqwest::Client::new();
    let url = |id: &str| format!("{}/v2/models/{id}/infer", pool.proxy.url);
    let cases = [
        (
            "multi-input",
            json!({"data": [[1.0, 2.0, 3.0, 4.0]]}),
            "3 inputs",
        ),
        (
            "linear-small",
            json!({"data": [[1.0, 2.0]]}),
            "takes 10 columns",
        ),
        (
            "linear-small",
            json!({"input_data": [[1.0, 2.0], [1.0]]}),
            "row 1 has 1 values",
        ),
        (
            "linear-small",
            json!({"data": [["a", 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]]}),
            "is the string \"a\" but the datatype is FP32",
        ),
        ("linear-small", json!({"input_data": []}), "has no rows"),
    ];
    for (id, body, want) in cases {
        let (status, answer) = post_json(&client, &url(id), &body).await;
        assert_eq!(status, 400, "{id} {body}: {answer}");
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(message.contains(want), "{id} {body}: {answer}");
    }
}

/// A model with a string input takes Azure ML rows of strings.
#[tokio::test]
async fn azure_ml_rows_of_strings_score_a_string_input_model() {
    use manymodels_tests::classifiers::{classifier_reference, classifier_store};
    let pool = Pool::local(&classifier_store(), 1, &[], &[]);
    let reference = classifier_reference()
        .into_iter()
        .find(|r| r["id"] == "zipmap-onehot-str-input")
        .unwrap();
    let rows: Vec<Value> = reference["inputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| json!([v]))
        .collect();
    let client = reqwest::Client::new();
    let url = format!("{}/v2/models/zipmap-onehot-str-input/infer", pool.proxy.url);
    let (status, answer) = post_json(&client, &url, &json!({ "data": rows })).await;
    assert_eq!(status, 200, "{answer}");
    let labels = &reference["outputs"][0];
    assert_eq!(labels["name"], "output_label");
    assert_eq!(answer["output_label"], labels["data"], "{answer}");
}
