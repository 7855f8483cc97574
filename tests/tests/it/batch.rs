//! The many-model route (`POST /v2/mm/batch`, and Azure ML's scoring route without a
//! model header) through a real proxy in front of three real scorers: records for many
//! models answered in order, each equal to its model's single-model answer; bad records
//! failing alone; id templates per route and per key; Azure ML's shapes; size limits; and
//! no record lost or reordered while a scorer is killed during a stream of batches.

use std::collections::BTreeMap;

use manymodels_contract::batch::{BatchAnswer, RecordResult, Values};
use manymodels_models::Mix;
use manymodels_tests::process::{Pool, metric_total};
use manymodels_tests::{TempDir, generated_rows, post_json, rows_body};
use serde_json::{Value, json};

/// `n` tiny models (`gen-00000`...), each with its feature count.
fn store(name: &str, n: usize) -> (TempDir, Vec<usize>) {
    let store = TempDir::new(name);
    manymodels_models::write_store(store.path(), n, Mix::Tiny, 11).unwrap();
    let features = (0..n)
        .map(|i| manymodels_models::spec_for(i, Mix::Tiny, 11).features())
        .collect();
    (store, features)
}

/// Records over the models, `per_model` each, interleaved (record `r` is for model
/// `r % n`), each row seeded by its position.
fn records(features: &[usize], count: usize) -> Vec<(usize, Vec<f32>)> {
    (0..count)
        .map(|r| {
            let model = (r * 7919) % features.len();
            let row = generated_rows(features[model], 1, r as u64 + 1).remove(0);
            (model, row)
        })
        .collect()
}

fn batch_body(records: &[(usize, Vec<f32>)]) -> Value {
    json!({
        "records": records
            .iter()
            .map(|(m, row)| json!({"model": manymodels_models::model_id(*m), "features": row}))
            .collect::<Vec<_>>()
    })
}

async fn batch(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    post_json(client, &format!("{url}/v2/mm/batch"), body).await
}

fn answer(body: Value) -> BatchAnswer {
    serde_json::from_value(body.clone()).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn floats(values: &Values) -> Vec<f32> {
    match values {
        Values::Floats(v) => v.clone(),
        other => panic!("not floats: {other:?}"),
    }
}

#[tokio::test]
async fn records_for_many_models_answer_as_their_single_calls_in_order() {
    let (store, features) = store("batch-many", 200);
    let pool = Pool::local(store.path(), 3, &[], &[]);
    let client = reqwest::Client::new();
    let records = records(&features, 1000);
    let (status, body) = batch(&client, &pool.proxy.url, &batch_body(&records)).await;
    assert_eq!(status, 200, "{body}");
    let answer = answer(body);
    assert_eq!((answer.models, answer.failed), (200, 0));
    assert_eq!(answer.results.len(), 1000);
    // Each model's records, asked as one multi-row OIP request: the same values, bit for
    // bit, in the same order.
    let mut by_model: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (r, (m, _)) in records.iter().enumerate() {
        by_model.entry(*m).or_default().push(r);
    }
    let loads = metric_total(&pool.scorers, "mm_scorer_model_loads_total").await;
    assert_eq!(loads, 200.0, "each model loaded once pool-wide");
    for (m, positions) in &by_model {
        let id = manymodels_models::model_id(*m);
        let rows: Vec<Vec<f32>> = positions.iter().map(|&r| records[r].1.clone()).collect();
        let (status, single) = post_json(
            &client,
            &format!("{}/v2/models/{id}/infer", pool.proxy.url),
            &rows_body(&rows),
        )
        .await;
        assert_eq!(status, 200, "{single}");
        for output in single["outputs"].as_array().unwrap() {
            let name = output["name"].as_str().unwrap();
            let data: Vec<f32> = output["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let width = data.len() / positions.len();
            for (k, &r) in positions.iter().enumerate() {
                let result = &answer.results[r];
                assert_eq!(result.model.as_deref(), Some(id.as_str()), "record {r}");
                assert_eq!(result.model_version.as_deref(), Some("1"));
                let RecordResult::Scored { outputs } = &result.result else {
                    panic!("record {r}: {:?}", result.result);
                };
                let got = floats(&outputs[name]);
                let want = &data[k * width..(k + 1) * width];
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "record {r} ({id}) output {name}"
                );
            }
        }
    }
    // The single calls went where the groups had gone (the same routing): nothing new was
    // loaded anywhere.
    assert_eq!(
        metric_total(&pool.scorers, "mm_scorer_model_loads_total").await,
        200.0
    );
    let proxy = pool.proxy.metrics().await;
    assert_eq!(proxy.get("mm_proxy_batch_groups_total"), 200.0);
    assert_eq!(
        proxy.get(r#"mm_proxy_batch_records_total{outcome="ok"}"#),
        1000.0
    );
}

#[tokio::test]
async fn a_bad_record_fails_alone_and_the_rest_are_answered() {
    let (store, features) = store("batch-bad", 3);
    let pool = Pool::local(
        store.path(),
        2,
        &[],
        &["auth.api_keys=gen:k1:gen-00000|gen-00001|gen-0999"],
    );
    let client = reqwest::Client::new();
    let row = |m: usize| generated_rows(features[m], 1, 5).remove(0);
    let body = json!({"records": [
        {"model": "gen-00000", "features": row(0)},
        {"model": "gen-09999", "features": row(0)},
        {"model": "gen-00001", "features": [1.0]},
        {"model": "gen-00002", "features": row(2)},
        {"model": "../etc", "features": [1.0]},
        {"model": "gen-00001", "features": row(1)},
        {"model": "gen-00000", "version": 9, "features": row(0)},
    ]});
    let response = client
        .post(format!("{}/v2/mm/batch", pool.proxy.url))
        .bearer_auth("k1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer = answer(response.json().await.unwrap());
    let status = |i: usize| match &answer.results[i].result {
        RecordResult::Failed { status, .. } => *status,
        _ => 200,
    };
    let statuses: Vec<u16> = (0..7).map(status).collect();
    // An unknown model 404, a wrong width 400 (the scorer's, for that record alone), a
    // model outside the key's scope 403, an invalid id 400, an unknown version 404.
    assert_eq!(statuses, [200, 404, 400, 403, 400, 200, 404], "{answer:?}");
    assert_eq!(answer.failed, 5);
    let RecordResult::Failed { error, .. } = &answer.results[2].result else {
        unreachable!()
    };
    assert!(error.contains("feature"), "{error}");
    // Without a key: 401 for the whole request, nothing read.
    let (status, body) = batch(&client, &pool.proxy.url, &body).await;
    assert_eq!(status, 401, "{body}");
    // A body that is not a many-model request: 400 naming the shape it should have.
    let response = client
        .post(format!("{}/v2/mm/batch", pool.proxy.url))
        .bearer_auth("k1")
        .body(b"{\"rows\": []}".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("records"),
        "{body}"
    );
}

#[tokio::test]
async fn records_name_models_through_the_route_and_key_templates() {
    let (store, features) = store("batch-template", 4);
    let pool = Pool::local(
        store.path(),
        2,
        &[],
        &[
            "auth.api_keys=plain:k0,acme:k1",
            "batch.id_template=gen-{store}{brand}",
            "batch.key_templates=acme=gen-0000{store}",
        ],
    );
    let client = reqwest::Client::new();
    let row = generated_rows(features[3], 1, 9).remove(0);
    let send = |key: &'static str, body: Value| {
        let client = client.clone();
        let url = format!("{}/v2/mm/batch", pool.proxy.url);
        async move {
            let response = client
                .post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            answer(response.json().await.unwrap())
        }
    };
    // The route's template: two key fields, one a number.
    let mut record = json!({"store": "0000", "brand": 3, "features": row});
    let routed = send("k0", json!({"records": [record.clone()]})).await;
    assert_eq!(
        routed.results[0].model.as_deref(),
        Some("gen-00003"),
        "{routed:?}"
    );
    assert_eq!(routed.failed, 0, "{routed:?}");
    // The key's own template reads only `store`: `brand` is then a named feature, which
    // a model declaring no columns refuses to mix with... so send it without.
    record.as_object_mut().unwrap().remove("brand");
    record["store"] = json!("3");
    let acme = send("k1", json!({"records": [record]})).await;
    assert_eq!(acme.results[0].model.as_deref(), Some("gen-00003"));
    assert_eq!(acme.failed, 0, "{acme:?}");
    assert_eq!(acme.results[0].result, routed.results[0].result);
}

#[tokio::test]
async fn azure_ml_scoring_route_takes_the_many_model_shapes() {
    let (store, features) = store("batch-aml", 3);
    let pool = Pool::local(store.path(), 2, &[], &["batch.id_template=gen-0000{store}"]);
    let client = reqwest::Client::new();
    let width = features[1];
    let rows: Vec<Vec<f32>> = generated_rows(width, 2, 3);
    let mut columns = vec!["store".to_string()];
    columns.extend((0..width).map(|i| format!("f{i}")));
    let data: Vec<Value> = rows
        .iter()
        .map(|row| {
            let mut values = vec![json!("1")];
            values.extend(row.iter().map(|v| json!(v)));
            Value::Array(values)
        })
        .collect();
    let split = json!({"input_data": {"columns": columns, "index": [0, 1], "data": data}});
    let (status, body) = post_json(&client, &format!("{}/score", pool.proxy.url), &split).await;
    assert_eq!(status, 200, "{body}");
    let from_split = answer(body);
    assert_eq!(from_split.failed, 0, "{from_split:?}");
    // The same rows as records under `data`, on `POST /`: the same answers.
    let records: Vec<Value> = rows
        .iter()
        .map(|row| json!({"store": "1", "features": row}))
        .collect();
    let (status, body) = post_json(
        &client,
        &format!("{}/", pool.proxy.url),
        &json!({"data": records}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answer(body).results, from_split.results);
    // A model header still means one model's OIP or Azure ML request.
    let response = client
        .post(format!("{}/score", pool.proxy.url))
        .header("x-mm-model", "gen-00001")
        .json(&json!({"input_data": {"columns": columns[1..], "index": [0, 1], "data": rows}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn oversized_requests_are_refused_and_the_proxy_keeps_serving() {
    let (store, features) = store("batch-limits", 2);
    let pool = Pool::local(
        store.path(),
        1,
        &[],
        &["batch.max_bytes=4KiB", "batch.max_records=10"],
    );
    let client = reqwest::Client::new();
    let many = records(&features, 11);
    let (status, body) = batch(&client, &pool.proxy.url, &batch_body(&many)).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("batch.max_records"),
        "{body}"
    );
    let big = json!({"records": [{"model": "gen-00000", "features": vec![0.5f32; 2000]}]});
    let (status, body) = batch(&client, &pool.proxy.url, &big).await;
    assert_eq!(status, 413, "{body}");
    let few = records(&features, 4);
    let (status, body) = batch(&client, &pool.proxy.url, &batch_body(&few)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answer(body).failed, 0);
}

#[tokio::test]
async fn no_record_is_lost_or_reordered_while_a_scorer_is_killed() {
    let (store, features) = store("batch-kill", 60);
    let mut pool = Pool::local(store.path(), 3, &[], &[]);
    let client = reqwest::Client::new();
    let records = records(&features, 300);
    let body = batch_body(&records);
    let (status, reference) = batch(&client, &pool.proxy.url, &body).await;
    assert_eq!(status, 200, "{reference}");
    let reference = answer(reference);
    assert_eq!(reference.failed, 0);
    let url = pool.proxy.url.clone();
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::channel::<usize>(64);
    let stream = tokio::spawn(async move {
        let mut answers = Vec::new();
        for i in 0..24 {
            let (status, answered) = batch(&client, &url, &body).await;
            answers.push((status, answered));
            let _ = sent_tx.send(i).await;
        }
        answers
    });
    // Kill the scorer holding the most models after the third batch.
    while let Some(i) = sent_rx.recv().await {
        if i == 2 {
            pool.scorers[0].kill();
            break;
        }
    }
    let answers = stream.await.unwrap();
    for (i, (status, answered)) in answers.into_iter().enumerate() {
        assert_eq!(status, 200, "batch {i}: {answered}");
        let answered = answer(answered);
        assert_eq!(answered.failed, 0, "batch {i}: {answered:?}");
        assert_eq!(answered.results, reference.results, "batch {i}");
    }
    assert!(
        pool.proxy.metrics().await.get("mm_proxy_retries_total") >= 1.0,
        "the killed scorer's groups went to the next candidate"
    );
}

#[tokio::test]
async fn the_deadline_is_the_whole_requests() {
    let (store, features) = store("batch-deadline", 300);
    let pool = Pool::local(store.path(), 3, &[], &[]);
    let client = reqwest::Client::new();
    let body = batch_body(&records(&features, 600));
    let url = format!("{}/v2/mm/batch", pool.proxy.url);
    // 300 cold models cannot all load within 2 ms: the groups past it fail with 504, each
    // alone, and the call itself still answers every record in its place.
    let response = client
        .post(&url)
        .header("x-mm-timeout-ms", "2")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answered = answer(response.json().await.unwrap());
    assert_eq!(answered.results.len(), 600);
    assert!(answered.failed > 0, "nothing missed a 2 ms deadline");
    for result in &answered.results {
        if let RecordResult::Failed { status, error } = &result.result {
            assert_eq!(*status, 504, "{error}");
        }
    }
    // A malformed deadline is refused before anything is read.
    let response = client
        .post(&url)
        .header("x-mm-timeout-ms", "soon")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // Without one, everything is answered.
    let (status, body) = batch(&client, &pool.proxy.url, &body).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answer(body).failed, 0);
}
