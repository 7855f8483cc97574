//! The records route (`POST /v2/mm/models/{id}/records`, the scorer's side of the
//! many-model route): per-record errors beside answered records, column reordering by the
//! names a model declares (`manymodels.columns` in its `metadata_props`), the outputs of
//! each record's row, and what fails a whole request.

use super::*;

const NAMES: [&str; 10] = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];

/// A store holding `linear-small` (ten FP32 features) declaring its columns `a`..`j`.
fn named_store() -> TempDir {
    let store = TempDir::new("records");
    let bytes = std::fs::read(demo_store().join("linear-small/1/model.onnx")).unwrap();
    let columns = serde_json::to_string(&NAMES).unwrap();
    write_model(
        store.path(),
        "named",
        1,
        &manymodels_models::with_metadata_prop(&bytes, "manymodels.columns", &columns),
    )
    .unwrap();
    store
}

fn rows() -> Vec<Vec<f32>> {
    manymodels_tests::reference::generated_rows(10, 3, 7)
}

#[tokio::test]
async fn features_named_in_another_order_answer_as_in_order() {
    for engine in [NativeEngine::Auto, NativeEngine::Off] {
        let store = named_store();
        let (_, router) = scorer_for(store.path(), |c| c.native_engine = engine);
        let rows = rows();
        let order = [7, 2, 9, 0, 4, 1, 8, 3, 6, 5];
        let named = |row: &Vec<f32>| {
            json!({
                "features": order.iter().map(|&i| row[i]).collect::<Vec<_>>(),
                "columns": order.iter().map(|&i| NAMES[i]).collect::<Vec<_>>(),
            })
        };
        let in_order: Vec<Value> = rows.iter().map(|r| json!({"features": r})).collect();
        let by_name: Vec<Value> = rows.iter().map(named).collect();
        let mut unknown = named(&rows[0]);
        unknown["columns"][3] = json!("z");
        let mut missing = named(&rows[0]);
        missing["columns"].as_array_mut().unwrap().pop();
        missing["features"].as_array_mut().unwrap().pop();
        let a = post_json(
            &router,
            "/v2/mm/models/named/records",
            &json!({"records": in_order}),
        )
        .await
        .ok();
        let mut mixed = by_name.clone();
        mixed.insert(1, unknown);
        mixed.push(missing);
        let b = post_json(
            &router,
            "/v2/mm/models/named/records",
            &json!({"records": mixed}),
        )
        .await
        .ok();
        let (a, b) = (
            a["results"].as_array().unwrap(),
            b["results"].as_array().unwrap(),
        );
        assert_eq!(b.len(), 5, "{b:?}");
        assert_eq!(b[0], a[0], "{engine:?}");
        assert_eq!(b[2], a[1]);
        assert_eq!(b[3], a[2]);
        assert_eq!(b[1]["status"], json!(400));
        assert!(
            b[1]["error"]
                .as_str()
                .unwrap()
                .contains("unknown column 'z'"),
            "{b:?}"
        );
        assert_eq!(b[4]["status"], json!(400));
        assert!(
            b[4]["error"]
                .as_str()
                .unwrap()
                .contains("missing column 'f'"),
            "{b:?}"
        );
        // The same rows through the infer route (one call of three rows) answer alike.
        let infer = post_json(&router, "/v2/models/named/infer", &rows_body(&rows))
            .await
            .ok();
        let data = infer["outputs"][0]["data"].as_array().unwrap();
        let name = infer["outputs"][0]["name"].as_str().unwrap();
        for (i, result) in a.iter().enumerate() {
            assert_eq!(
                (result["outputs"][name][0].as_f64().unwrap() as f32).to_bits(),
                (data[i].as_f64().unwrap() as f32).to_bits(),
                "{engine:?} row {i}: {result} vs {infer}"
            );
        }
        // The declaration is in the metadata.
        let metadata = get(&router, "/v2/models/named").await.ok();
        assert_eq!(metadata["columns"], json!(NAMES));
        assert!(metadata.get("forecast").is_none(), "{metadata}");
    }
}

#[tokio::test]
async fn each_bad_record_fails_alone() {
    let router = demo_router();
    let row: Vec<f32> = rows()[0].clone();
    let body = json!({"records": [
        {"features": row},
        {"features": &row[..9]},
        {"features": [1e39, 0, 0, 0, 0, 0, 0, 0, 0, 0]},
        {"features": [1], "forecast": {"horizon": 2, "dates": ["2024-01-04"], "values": [1.0]}},
        {"features": row, "columns": ["x"]},
        {},
        {"features": row, "columns": NAMES},
    ]});
    let reply = post_json(&router, "/v2/mm/models/linear-small/records", &body).await;
    assert_eq!(reply.header("x-mm-cache"), Some("miss"));
    let answer = reply.ok();
    assert_eq!(answer["model_name"], json!("linear-small"));
    assert_eq!(answer["model_version"], json!("1"));
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 7);
    assert!(results[0]["outputs"]["variable"][0].is_number(), "{answer}");
    // A model declaring no columns takes named values in the order sent.
    assert_eq!(results[6], results[0]);
    for (i, says) in [
        (1, "9 features, the model takes 10"),
        (2, "is not a finite FP32 number"),
        (3, "declares no forecast"),
        (4, "1 column names for 10 values"),
        (5, "0 features, the model takes 10"),
    ] {
        assert_eq!(results[i]["status"], json!(400), "{i}: {answer}");
        let error = results[i]["error"].as_str().unwrap();
        assert!(error.contains(says), "{i}: {error}");
    }
    let reply = post_json(&router, "/v2/mm/models/linear-small/records", &body).await;
    assert_eq!(reply.header("x-mm-cache"), Some("hit"));
    let text = metrics_text(&router).await;
    assert_eq!(
        metric(
            &text,
            r#"mm_scorer_requests_total{code="200",route="records"}"#
        ),
        2.0,
        "{text}"
    );
}

#[tokio::test]
async fn a_classifiers_records_get_each_output_row() {
    let router = demo_router();
    let rows = manymodels_tests::reference::generated_rows(8, 2, 3);
    let body = json!({"records": rows.iter().map(|r| json!({"features": r})).collect::<Vec<_>>()});
    let answer = post_json(&router, "/v2/mm/models/logistic-churn/records", &body)
        .await
        .ok();
    let infer = post_json(
        &router,
        "/v2/models/logistic-churn/infer",
        &rows_body(&rows),
    )
    .await
    .ok();
    for output in infer["outputs"].as_array().unwrap() {
        let name = output["name"].as_str().unwrap();
        let data = output["data"].as_array().unwrap();
        let per = data.len() / 2;
        for (i, result) in answer["results"].as_array().unwrap().iter().enumerate() {
            assert_eq!(
                result["outputs"][name].as_array().unwrap()[..],
                data[i * per..(i + 1) * per],
                "{name} row {i}: {answer}"
            );
        }
    }
}

#[tokio::test]
async fn whole_request_failures_are_oip_errors() {
    let router = demo_router();
    for (uri, body, status, says) in [
        (
            "/v2/mm/models/nope/records",
            json!({"records": []}),
            StatusCode::NOT_FOUND,
            "nope",
        ),
        (
            "/v2/mm/models/linear-small/records",
            json!({"records": [{"features": "x"}]}),
            StatusCode::BAD_REQUEST,
            "malformed records request",
        ),
        (
            "/v2/mm/models/multi-input/records",
            json!({"records": [{"features": [1]}]}),
            StatusCode::BAD_REQUEST,
            "does not take records",
        ),
        (
            "/v2/mm/models/linear-small/versions/7/records",
            json!({"records": []}),
            StatusCode::NOT_FOUND,
            "7",
        ),
        (
            "/v2/mm/models/linear-small/versions/07/records",
            json!({"records": []}),
            StatusCode::BAD_REQUEST,
            "invalid version",
        ),
    ] {
        let reply = post_json(&router, uri, &body).await;
        assert_eq!(reply.status, status, "{uri}: {}", reply.text());
        let error: ErrorBody = serde_json::from_slice(&reply.bytes).unwrap();
        assert!(error.error.contains(says), "{uri}: {}", error.error);
    }
}
