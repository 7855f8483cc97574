//! Recursive forecasts on the scorer's records route (`POST /v2/mm/models/{id}/records`),
//! over the committed forecast corpus (`models/forecast`, six per-series models made by
//! `models/make_forecast.py`, each declaring its columns and forecast in `metadata_props`),
//! against the same loop run in Python over ONNX Runtime (`tests/forecast_reference.py`):
//! every value equal bit for bit (`f32::to_bits`), every date equal, on a scorer with the
//! native engine and on one with ONNX Runtime only.

use std::io::Write;
use std::process::{Command, Stdio};

use manymodels_tests::process::ScorerProcess;
use manymodels_tests::{get_json, post_json, root};
use serde_json::{Value, json};

/// Each series' history (`models/forecast/histories.json`), by model id.
fn histories() -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(root().join("models/forecast/histories.json")).unwrap();
    let map: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(map.len(), 6);
    map.into_iter().collect()
}

/// The Python loop's forecasts for `asks` (model, horizon, price, dates, values).
fn python_forecasts(asks: &[Value]) -> Vec<Value> {
    let mut child = Command::new("python3")
        .arg(root().join("tests/forecast_reference.py"))
        .arg(root().join("models/forecast"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(asks).unwrap())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "tests/forecast_reference.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A forecast record as the proxy sends it to the scorer; the price by name or in order.
fn forecast_record(history: &Value, horizon: u32, price: f64, named: bool) -> Value {
    let mut record = json!({
        "features": [price],
        "forecast": {
            "horizon": horizon,
            "frequency": history["date_freq"],
            "dates": history["dates"],
            "values": history["values"],
        },
    });
    if named {
        record["columns"] = json!(["price"]);
    }
    record
}

/// Asserts `result` is a forecast equal to the first `horizon` steps of `reference`.
fn assert_forecast(context: &str, result: &Value, reference: &Value, horizon: usize) {
    let forecast = &result["forecast"];
    assert_eq!(
        forecast["dates"].as_array().unwrap()[..],
        reference["dates"].as_array().unwrap()[..horizon],
        "{context}: {result}"
    );
    let got: Vec<u32> = forecast["values"]
        .as_array()
        .unwrap_or_else(|| panic!("{context}: not a forecast: {result}"))
        .iter()
        .map(|v| (v.as_f64().unwrap() as f32).to_bits())
        .collect();
    let want: Vec<u32> = reference["bits"].as_array().unwrap()[..horizon]
        .iter()
        .map(|b| b.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(got, want, "{context}: {result} vs {reference}");
}

#[tokio::test]
async fn forecasts_equal_the_python_loop_bit_for_bit_on_both_engines() {
    let series = histories();
    // Per series: the full horizon at the last week's price, and six steps at another
    // price (the input held over the horizon changes every step's row).
    let asks: Vec<Value> = series
        .iter()
        .flat_map(|(id, h)| {
            let ask = |price: f64, horizon: u32| {
                json!({"model": id, "horizon": horizon, "price": price,
                       "dates": h["dates"], "values": h["values"]})
            };
            let price = h["price"].as_f64().unwrap();
            [ask(price, 12), ask(price + 0.35, 6)]
        })
        .collect();
    let reference = python_forecasts(&asks);
    let store = root().join("models/forecast");
    let client = reqwest::Client::new();
    for engine in ["engine.native=auto", "engine.native=off"] {
        let scorer = ScorerProcess::local(&store, &[engine]);
        for (n, (id, history)) in series.iter().enumerate() {
            let (full, other) = (&reference[2 * n], &reference[2 * n + 1]);
            let price = history["price"].as_f64().unwrap();
            // Several horizons of one series in one request, the price by name or not.
            let body = json!({"records": [
                forecast_record(history, 1, price, false),
                forecast_record(history, 5, price, true),
                forecast_record(history, 12, price, false),
                forecast_record(history, 6, price + 0.35, true),
            ]});
            let url = format!("{}/v2/mm/models/{id}/records", scorer.url);
            let (status, answer) = post_json(&client, &url, &body).await;
            assert_eq!(status, 200, "{engine} {id}: {answer}");
            assert_eq!(answer["model_name"], json!(id));
            assert_eq!(answer["model_version"], json!("1"));
            let results = answer["results"].as_array().unwrap();
            assert_eq!(results.len(), 4);
            let context = format!("{engine} {id}");
            assert_forecast(&context, &results[0], full, 1);
            assert_forecast(&context, &results[1], full, 5);
            assert_forecast(&context, &results[2], full, 12);
            assert_forecast(&context, &results[3], other, 6);
            // The version's own route answers alike.
            let url = format!("{}/v2/mm/models/{id}/versions/1/records", scorer.url);
            let (status, again) = post_json(&client, &url, &body).await;
            assert_eq!(status, 200, "{again}");
            assert_eq!(again["results"], answer["results"]);
        }
    }
}

#[tokio::test]
async fn plain_records_forecasts_and_bad_records_in_one_request() {
    let series = histories();
    let (id, history) = &series[0];
    let price = history["price"].as_f64().unwrap();
    let reference = python_forecasts(&[json!({"model": id, "horizon": 3, "price": price,
        "dates": history["dates"], "values": history["values"]})]);
    let scorer = ScorerProcess::local(&root().join("models/forecast"), &[]);
    let client = reqwest::Client::new();

    // The first step's row by hand: lags 1-4 from the history, the ISO week and month of
    // the first forecast date, the price. Scored as a plain record it must give the
    // forecast's first value, exactly.
    let values: Vec<f64> = history["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let first = reference[0]["dates"][0].as_str().unwrap();
    let date = first
        .split('-')
        .map(|p| p.parse::<u32>().unwrap())
        .collect::<Vec<_>>();
    let week = python_week(first);
    let n = values.len();
    let row = [
        values[n - 1],
        values[n - 2],
        values[n - 3],
        values[n - 4],
        f64::from(week),
        f64::from(date[1]),
        price,
    ];
    let columns = [
        "lag_1",
        "lag_2",
        "lag_3",
        "lag_4",
        "week_of_year",
        "month",
        "price",
    ];
    // The same row by name, in reverse order.
    let reversed_values: Vec<f64> = row.iter().rev().copied().collect();
    let reversed_names: Vec<&str> = columns.iter().rev().copied().collect();
    let mut gap = forecast_record(history, 2, price, false);
    gap["forecast"]["dates"][3] = json!("1990-01-04");
    let mut short = forecast_record(history, 2, price, false);
    short["forecast"]["dates"] = json!(&history["dates"].as_array().unwrap()[..3]);
    short["forecast"]["values"] = json!(&history["values"].as_array().unwrap()[..3]);
    let body = json!({"records": [
        {"features": row},
        forecast_record(history, 3, price, true),
        {"features": reversed_values, "columns": reversed_names},
        {"features": row, "columns": ["lag_1", "lag_2", "lag_3", "lag_4", "week_of_year", "month", "cost"]},
        {"features": &row[..6]},
        forecast_record(history, 13, price, false),
        gap,
        short,
        {"features": [price], "columns": ["cost"], "forecast": forecast_record(history, 2, price, false)["forecast"]},
        {"features": [price], "forecast": {"horizon": 2, "frequency": "Q", "dates": history["dates"], "values": history["values"]}},
    ]});
    let url = format!("{}/v2/mm/models/{id}/records", scorer.url);
    let response = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        manymodels_tests::http::header(&response, "x-mm-cache"),
        "miss"
    );
    let answer: Value = response.json().await.unwrap();
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 10, "{answer}");
    let scored = results[0]["outputs"]["variable"][0].as_f64().unwrap() as f32;
    assert_eq!(
        scored.to_bits() as u64,
        reference[0]["bits"][0].as_u64().unwrap(),
        "{answer}"
    );
    assert_forecast("mixed", &results[1], &reference[0], 3);
    assert_eq!(results[2], results[0], "by name in another order: {answer}");
    for (i, says) in [
        (3, "unknown column 'cost'"),
        (4, "6 features, the model takes 7"),
        (5, "forecast_horizon 13: the model forecasts 1 to 12 steps"),
        (6, "expected"),
        (7, "the history has 3 values, the model needs at least 4"),
        (8, "unknown column 'cost'"),
        (9, "unknown frequency 'Q'"),
    ] {
        assert_eq!(results[i]["status"], json!(400), "{i}: {}", results[i]);
        let error = results[i]["error"].as_str().unwrap();
        assert!(error.contains(says), "{i}: {error}");
    }
    // Hit the second time.
    let response = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(
        manymodels_tests::http::header(&response, "x-mm-cache"),
        "hit"
    );

    // Whole-request failures are OIP errors.
    let (status, error) = post_json(
        &client,
        &format!("{}/v2/mm/models/Store9_none_lr/records", scorer.url),
        &json!({"records": []}),
    )
    .await;
    assert_eq!(status, 404, "{error}");
    assert!(error["error"].as_str().is_some(), "{error}");
    let (status, error) = post_json(&client, &url, &json!({"records": 3})).await;
    assert_eq!(status, 400, "{error}");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("malformed records request"),
        "{error}"
    );

    // The model's metadata shows its declaration.
    let metadata = get_json(&client, &format!("{}/v2/models/{id}", scorer.url)).await;
    assert_eq!(metadata["columns"], json!(columns));
    assert_eq!(metadata["forecast"]["frequency"], json!("W-THU"));
    assert_eq!(metadata["forecast"]["max_horizon"], json!(12));
    assert_eq!(
        metadata["forecast"]["features"][4],
        json!({"calendar": "week_of_year"})
    );
}

/// The ISO week of a `YYYY-MM-DD` date, from Python's `datetime` (not from the code under
/// test).
fn python_week(date: &str) -> u32 {
    let output = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import datetime; print(datetime.date.fromisoformat('{date}').isocalendar()[1])"
            ),
        ])
        .output()
        .expect("running python3");
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap()
}

/// Through the proxy's many-model route, as a many-models client sends it: 200 store×brand
/// series (the six models' histories, each series shifted and scaled), each record naming
/// its model by `{store}_{brand}_{model_type}`, forecast 5 steps in one call; every value
/// equal to the Python loop's bit for bit, every record in its place.
#[tokio::test]
async fn two_hundred_series_forecast_in_one_many_model_call() {
    let series = histories();
    let pool = manymodels_tests::process::Pool::local(
        &root().join("models/forecast"),
        3,
        &[],
        &["batch.id_template={store}_{brand}_{model_type}"],
    );
    let mut records = Vec::new();
    let mut asks = Vec::new();
    for i in 0..200 {
        let (id, history) = &series[i % series.len()];
        // Each series its own: values scaled, kept to four decimals as sales are sent.
        let scale = 1.0 + (i / series.len()) as f64 * 0.004;
        let values: Vec<f64> = history["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v.as_f64().unwrap() * scale * 1e4).round() / 1e4)
            .collect();
        let price =
            ((history["price"].as_f64().unwrap() + i as f64 * 0.01) * 100.0).round() / 100.0;
        records.push(json!({
            "store": history["store"], "brand": history["brand"], "model_type": history["model_type"],
            "forecast_horizon": 5, "date_freq": history["date_freq"], "price": price,
            "data": {"dates": history["dates"], "values": values},
        }));
        asks.push(json!({"model": id, "horizon": 5, "price": price,
            "date_freq": history["date_freq"], "dates": history["dates"], "values": values}));
    }
    let reference = python_forecasts(&asks);
    let client = reqwest::Client::new();
    let (status, body) = post_json(
        &client,
        &format!("{}/v2/mm/batch", pool.proxy.url),
        &json!({ "records": records }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["failed"], 0, "{body}");
    assert_eq!(body["models"], 6);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 200);
    for (i, (result, want)) in results.iter().zip(&reference).enumerate() {
        let (id, _) = &series[i % series.len()];
        assert_eq!(result["model"], json!(id), "record {i}");
        assert_forecast(&format!("record {i} ({id})"), result, want, 5);
    }
}
