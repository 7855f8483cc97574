//! `mmctl import` of MLflow model directories: models saved by the `mlflow` package itself
//! (`tests/mlflow_models.py`: `mlflow.sklearn`, `mlflow.lightgbm` and `mlflow.xgboost`
//! `save_model` with MLflow's default formats and a signature inferred from a pandas
//! DataFrame with named columns), converted by `convert.py --mlflow` through `python3`,
//! checked and published into a store and through a real pool's admin API, then scored
//! through the proxy, as OIP tensors and as named features in another order through
//! `mmctl score --batch`, and compared with the library's own predictions (the converter's
//! tolerance: |onnx - library| <= 1e-5 + 1e-4 |library|; labels exact). The signature's
//! column names are in the ONNX file's `manymodels.columns` (read with Python `onnx`) and
//! in the scorer's model metadata. Refusals: a flavor other than
//! sklearn, lightgbm or xgboost is named, a malformed MLmodel and a string column are
//! refused, a missing interpreter is a clear error.

use std::path::Path;
use std::process::Command;

use manymodels_tests::process::Pool;
use manymodels_tests::{TempDir, root};
use serde_json::{Value, json};

use super::{KEY, mmctl, outcomes, record, stored};

const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-5;
const COLUMNS: [&str; 4] = ["price", "qty", "temp", "promo"];

/// `python3 tests/mlflow_models.py <args>`, which must succeed.
fn helper(args: &[&str]) -> String {
    let output = Command::new("python3")
        .arg(root().join("tests/mlflow_models.py"))
        .args(args)
        .output()
        .expect("running python3");
    assert!(
        output.status.success(),
        "tests/mlflow_models.py {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The ONNX file's metadata_props, as Python `onnx` reads them.
fn metadata_props(file: &Path) -> Value {
    serde_json::from_str(&helper(&["metadata", &file.display().to_string()])).unwrap()
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= ATOL + RTOL * want.abs()
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// Scores the reference rows with `id` through the proxy and compares every output with
/// the library's predictions.
async fn assert_scores_like_its_library(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    reference: &Value,
) {
    let rows = reference["rows"].as_array().unwrap();
    let data: Vec<f64> = rows.iter().flat_map(floats).collect();
    let body = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows.len(), COLUMNS.len()], "data": data}]});
    let (status, _, answer) =
        manymodels_tests::post_via(client, &format!("{base}/v2/models/{id}/infer"), &body).await;
    assert_eq!(status, 200, "{id}: {answer}");
    let want = &reference["models"][id];
    let outputs = answer["outputs"].as_array().unwrap();
    if let Some(values) = want.get("values") {
        let got = floats(&outputs[0]["data"]);
        let want = floats(values);
        assert_eq!(got.len(), want.len(), "{id}: {answer}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(close(*g, *w), "{id} row {i}: onnx {g}, library {w}");
        }
        return;
    }
    // A classifier: the [rows, classes] probabilities and the [rows] labels.
    let probabilities = outputs
        .iter()
        .find(|o| o["datatype"] == "FP32" && o["shape"].as_array().unwrap().len() == 2)
        .unwrap_or_else(|| panic!("{id}: no probabilities in {answer}"));
    let got = floats(&probabilities["data"]);
    let want_p: Vec<f64> = want["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(floats)
        .collect();
    assert_eq!(got.len(), want_p.len(), "{id}: {answer}");
    for (i, (g, w)) in got.iter().zip(&want_p).enumerate() {
        assert!(close(*g, *w), "{id} probability {i}: onnx {g}, library {w}");
    }
    let labels = outputs
        .iter()
        .find(|o| o["datatype"] == "INT64")
        .unwrap_or_else(|| panic!("{id}: no labels in {answer}"));
    assert_eq!(labels["data"], want["labels"], "{id}: labels");
}

#[tokio::test]
async fn mlflow_models_import_check_and_score_like_their_library() {
    let work = TempDir::new("mlflow");
    helper(&["save", &work.path().display().to_string()]);
    let src = work.path().join("src");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(work.path().join("reference.json")).unwrap())
            .unwrap();
    let ids = ["lgb-demand", "sk-churn", "xgb-risk"];

    // Into a store: each directory converted, checked and written as version 1.
    let store = TempDir::new("mlflow-store");
    let to = format!("dir:{}", store.path().display());
    let src_arg = src.display().to_string();
    let args = [
        "--store", &to, "--json", "import", &src_arg, "--to", "store",
    ];
    let import = || mmctl(&args, &[]);
    let first = import().await;
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    let report = first.json();
    assert_eq!(
        outcomes(&report),
        ids.map(|id| (id.to_string(), Some(1), "published".to_string()))
    );
    for id in ids {
        let r = record(&report, id);
        assert_eq!(
            r["file"],
            src.join(id).display().to_string(),
            "the report names the MLflow directory"
        );
        assert!(r["engine"].is_string(), "checked as a scorer would: {r}");
        let file = store.path().join(id).join("1/model.onnx");
        assert!(stored(store.path(), id, 1).is_some());
        let props = metadata_props(&file);
        let columns: Value = serde_json::from_str(props["manymodels.columns"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{id}: {props}: {e}"));
        assert_eq!(
            columns,
            json!(COLUMNS),
            "{id}: the signature's columns, in order"
        );
    }
    // The converter writes the same bytes for the same model: a rerun skips them all.
    let again = import().await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.json()["summary"]["skipped"], 3, "{}", again.stdout);

    // Through the admin API of a real pool: live at once, scored like the library.
    let empty = TempDir::new("mlflow-pool");
    let pool = Pool::local(
        empty.path(),
        1,
        &[&format!("auth.admin_keys={KEY}")],
        &[&format!("auth.admin_keys={KEY}")],
    );
    let api = mmctl(
        &[
            "--proxy",
            &pool.proxy.url,
            "--key",
            KEY,
            "--json",
            "import",
            &src_arg,
            "--python",
            "python3",
        ],
        &[],
    )
    .await;
    assert_eq!(api.code, 0, "{}\n{}", api.stdout, api.stderr);
    assert_eq!(api.json()["summary"]["published"], 3, "{}", api.stdout);
    let client = reqwest::Client::new();
    for id in ids {
        assert_scores_like_its_library(&client, &pool.proxy.url, id, &reference).await;
        let metadata =
            manymodels_tests::get_json(&client, &format!("{}/v2/models/{id}", pool.proxy.url))
                .await;
        assert_eq!(metadata["columns"], json!(COLUMNS), "{id}: {metadata}");
    }

    // Named features in another order than the model's, through `mmctl score --batch`
    // and the many-model route: the scorer places them by the declared columns.
    let order = ["qty", "model", "promo", "price", "temp"];
    let mut csv = order.join(",") + "\n";
    for id in ids {
        for row in reference["rows"].as_array().unwrap() {
            let row = floats(row);
            let cells: Vec<String> = order
                .iter()
                .map(|name| match COLUMNS.iter().position(|c| c == name) {
                    Some(i) => format!("{}", row[i]),
                    None => id.to_string(),
                })
                .collect();
            csv.push_str(&(cells.join(",") + "\n"));
        }
    }
    let file = work.path().join("records.csv");
    std::fs::write(&file, csv).unwrap();
    let scored = mmctl(
        &[
            "--proxy",
            &pool.proxy.url,
            "score",
            "--batch",
            &file.display().to_string(),
            "--chunk",
            "10",
        ],
        &[],
    )
    .await;
    assert_eq!(scored.code, 0, "{}\n{}", scored.stdout, scored.stderr);
    let results: Vec<Value> = scored
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rows = reference["rows"].as_array().unwrap().len();
    assert_eq!(results.len(), ids.len() * rows, "{}", scored.stdout);
    for (n, result) in results.iter().enumerate() {
        let (id, row) = (ids[n / rows], n % rows);
        assert_eq!(result["model"], id, "{result}");
        let want = &reference["models"][id];
        let outputs = result["outputs"]
            .as_object()
            .unwrap_or_else(|| panic!("{id} row {row}: {result}"));
        if let Some(values) = want.get("values") {
            let got = floats(outputs.values().next().unwrap())[0];
            let w = floats(values)[row];
            assert!(close(got, w), "{id} row {row}: onnx {got}, library {w}");
            continue;
        }
        let want_p = floats(&want["probabilities"][row]);
        let got_p = outputs
            .values()
            .map(floats)
            .find(|v| v.len() == want_p.len())
            .unwrap_or_else(|| panic!("{id} row {row}: {result}"));
        for (g, w) in got_p.iter().zip(&want_p) {
            assert!(
                close(*g, *w),
                "{id} row {row}: onnx {got_p:?}, library {want_p:?}"
            );
        }
        let label = outputs
            .values()
            .find(|v| v.as_array().is_some_and(|a| a.len() == 1 && a[0].is_i64()))
            .unwrap_or_else(|| panic!("{id} row {row}: no label in {result}"));
        assert_eq!(label[0], want["labels"][row], "{id} row {row}");
    }
}

#[tokio::test]
async fn mlflow_refusals_name_the_flavor_and_the_fault() {
    let work = TempDir::new("mlflow-bad");
    helper(&["save-bad", &work.path().display().to_string()]);
    let bad = work.path().join("bad").display().to_string();
    let store = TempDir::new("mlflow-bad-store");
    let to = format!("dir:{}", store.path().display());
    let run = mmctl(
        &["--store", &to, "--json", "import", &bad, "--to", "store"],
        &[],
    )
    .await;
    assert_eq!(run.code, 1, "refusals make the exit code 1: {}", run.stderr);
    let report = run.json();
    for (id, says) in [
        (
            "custom-pyfunc",
            "MLflow flavor python_function is not converted here: only sklearn, lightgbm, xgboost",
        ),
        ("broken-yaml", "MLmodel is not valid YAML"),
        (
            "text-column",
            "the signature has non-numeric columns: region (string)",
        ),
    ] {
        let r = record(&report, id);
        assert_eq!(r["outcome"], "refused", "{r}");
        let detail = r["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{id}: {detail}");
    }
    assert!(
        std::fs::read_dir(store.path()).unwrap().next().is_none(),
        "nothing written"
    );

    // A single MLflow directory is a source of its own; a missing interpreter says so.
    let one = work.path().join("src/sk-churn").display().to_string();
    let missing = mmctl(
        &["--store", &to, "import", &one, "--to", "store"],
        &[("MMCTL_PYTHON", "/nonexistent/python3")],
    )
    .await;
    assert_eq!(missing.code, 1);
    assert!(
        missing
            .stderr
            .contains("cannot run the Python interpreter '/nonexistent/python3'"),
        "{}",
        missing.stderr
    );
    let dry = mmctl(
        &[
            "--store",
            &to,
            "--json",
            "import",
            &one,
            "--to",
            "store",
            "--dry-run",
        ],
        &[],
    )
    .await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert_eq!(
        outcomes(&dry.json()),
        [("sk-churn".to_string(), Some(1), "would_publish".to_string())]
    );
}
