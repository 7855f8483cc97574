//! `mmctl score --batch` against a real pool (two scorers behind the proxy's many-model
//! route, `POST /v2/mm/batch`): records for several models and versions from JSON lines
//! and from CSV, sent in small chunks, answered in file order, each record's outputs equal
//! to what the model's own infer route answers for the same row; a record for a missing
//! model fails alone (exit code 1, counted on stderr); a malformed file names its line and
//! sends nothing.

use manymodels_tests::process::Pool;
use manymodels_tests::{TempDir, write_model};
use serde_json::{Value, json};

use super::{ROW, forest, linear, mmctl, row_body, write};

/// The single output's values of an OIP answer (the models here have one output).
fn oip_values(answer: &Value) -> Vec<f64> {
    answer["outputs"][0]["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no outputs: {answer}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// A batch result's single output's values.
fn batch_values(result: &Value) -> Vec<f64> {
    let outputs = result["outputs"]
        .as_object()
        .unwrap_or_else(|| panic!("not scored: {result}"));
    assert_eq!(outputs.len(), 1, "{result}");
    outputs
        .values()
        .next()
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-6 * w.abs().max(1.0),
            "{what}: batch {got:?}, infer {want:?}"
        );
    }
}

#[tokio::test]
async fn score_batch_sends_records_in_chunks_and_prints_results_in_file_order() {
    let store = TempDir::new("batch-store");
    write_model(store.path(), "shop-a", 1, &linear(8, 1).bytes).unwrap();
    write_model(store.path(), "shop-a", 2, &linear(8, 4).bytes).unwrap();
    write_model(store.path(), "shop-b", 1, &linear(8, 2).bytes).unwrap();
    write_model(store.path(), "shop-c", 1, &forest(3).bytes).unwrap();
    let pool = Pool::local(store.path(), 2, &[], &[]);
    let client = reqwest::Client::new();
    // What each model (and version) answers for ROW on its own infer route.
    let mut expected = std::collections::HashMap::new();
    for (key, path) in [
        ("shop-a", "shop-a"),
        ("shop-a@1", "shop-a/versions/1"),
        ("shop-b", "shop-b"),
        ("shop-c", "shop-c"),
    ] {
        let url = format!("{}/v2/models/{path}/infer", pool.proxy.url);
        let (status, _, answer) = manymodels_tests::post_via(&client, &url, &row_body()).await;
        assert_eq!(status, 200, "{answer}");
        expected.insert(key, oip_values(&answer));
    }

    // JSON lines: each line sent as written; chunks of 2, answers in file order.
    let dir = TempDir::new("batch-files");
    let records = [
        ("shop-a", json!({"model": "shop-a", "features": ROW})),
        ("shop-b", json!({"model": "shop-b", "features": ROW})),
        ("nope", json!({"model": "nope", "features": ROW})),
        ("shop-c", json!({"model": "shop-c", "features": ROW})),
        (
            "shop-a@1",
            json!({"model": "shop-a", "version": 1, "features": ROW}),
        ),
        ("shop-b", json!({"model": "shop-b", "features": ROW})),
    ];
    let mut jsonl = String::new();
    for (i, (_, record)) in records.iter().enumerate() {
        jsonl.push_str(&format!("{record}\n"));
        if i == 2 {
            jsonl.push('\n');
        }
    }
    let jsonl_file = dir.path().join("records.jsonl");
    write(&jsonl_file, jsonl.as_bytes());
    let proxy = pool.proxy.url.as_str();
    let jsonl_arg = jsonl_file.display().to_string();
    let run = mmctl(
        &[
            "--proxy", proxy, "score", "--batch", &jsonl_arg, "--chunk", "2",
        ],
        &[],
    )
    .await;
    assert_eq!(
        run.code, 1,
        "a failed record makes the exit code 1: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("1 of 6 records failed"),
        "{}",
        run.stderr
    );
    let results: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(results.len(), records.len(), "{}", run.stdout);
    for (result, (key, _)) in results.iter().zip(&records) {
        if *key == "nope" {
            assert_eq!(result["status"], 404, "{result}");
            assert!(result["error"].is_string(), "{result}");
            continue;
        }
        let model = key.split('@').next().unwrap();
        assert_eq!(result["model"], model, "{result}");
        let version = if *key == "shop-a@1" {
            "1"
        } else if model == "shop-a" {
            "2"
        } else {
            "1"
        };
        assert_eq!(result["model_version"], version, "{result}");
        assert_close(&batch_values(result), &expected[key], key);
    }

    // CSV: named features (the generated models declare no columns, so in file order),
    // the version column passed through; the same answers as the JSON lines.
    let mut csv = String::from("model,version");
    for i in 0..ROW.len() {
        csv.push_str(&format!(",f{i}"));
    }
    csv.push('\n');
    for (model, version) in [("shop-a", ""), ("shop-a", "1"), ("shop-c", "")] {
        let values: Vec<String> = ROW.iter().map(|v| v.to_string()).collect();
        csv.push_str(&format!("{model},{version},{}\n", values.join(",")));
    }
    let csv_file = dir.path().join("records.csv");
    write(&csv_file, csv.as_bytes());
    let csv_arg = csv_file.display().to_string();
    let run = mmctl(&["--proxy", proxy, "score", "--batch", &csv_arg], &[]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let results: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (result, key) in results.iter().zip(["shop-a", "shop-a@1", "shop-c"]) {
        assert_close(&batch_values(result), &expected[key], key);
    }
    assert_eq!(results.len(), 3);

    // A table for people: each record's line in the file and its result.
    let table = mmctl(
        &["--proxy", proxy, "score", "--batch", &jsonl_arg, "--table"],
        &[],
    )
    .await;
    assert_eq!(table.code, 1);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[0].starts_with("LINE"), "{}", table.stdout);
    assert_eq!(lines.len(), 7, "{}", table.stdout);
    assert!(
        lines[3].contains("nope") || lines[3].contains("failed 404"),
        "{}",
        table.stdout
    );
    assert!(
        lines[4].trim_start().starts_with('5'),
        "line numbers count the empty line: {}",
        table.stdout
    );

    // A malformed line is named and nothing is sent.
    let bad = dir.path().join("bad.jsonl");
    write(
        &bad,
        b"{\"model\": \"shop-a\", \"features\": [1]}\n[1, 2]\n",
    );
    let run = mmctl(
        &[
            "--proxy",
            proxy,
            "score",
            "--batch",
            &bad.display().to_string(),
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr
            .contains("line 2: a record is a JSON object, not an array"),
        "{}",
        run.stderr
    );
}
