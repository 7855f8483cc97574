//! The operate commands against a real pool (`models`, `versions`, `pin`, `canary`, `score`,
//! `status`, `explain`): each command's effect is checked on the pool itself (scores,
//! versions, the store); a refused call exits 1, a bad command line 2.

use manymodels_tests::process::Pool;
use manymodels_tests::reference::{TOLERANCE, close};
use manymodels_tests::{TempDir, write_model};
use serde_json::{Value, json};

use super::{KEY, ROW, Run, forest, infer, linear, mmctl, row_body, write};

#[tokio::test]
async fn operate_commands_drive_the_pool() {
    let store = TempDir::new("operate-store");
    write_model(store.path(), "store-7", 1, &linear(8, 101).bytes).unwrap();
    write_model(store.path(), "store-7", 2, &linear(8, 102).bytes).unwrap();
    write_model(store.path(), "other-1", 1, &forest(3).bytes).unwrap();
    // No warm-up loads: a push after the unload below would load `other-1` again before
    // `explain` looks.
    let pool = Pool::local(
        store.path(),
        2,
        &[&format!("auth.admin_keys={KEY}"), "warmup.max_fraction=0"],
        &[
            &format!("auth.admin_keys={KEY}"),
            "stats.push_interval=200ms",
        ],
    );
    let proxy = pool.proxy.url.clone();
    let run = |args: Vec<String>| {
        let proxy = proxy.clone();
        async move {
            let mut all = vec!["--proxy".to_string(), proxy, "--key".into(), KEY.into()];
            all.extend(args);
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            mmctl(&all, &[]).await
        }
    };
    let ok = |run: Run| -> Run {
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        run
    };
    let args = |s: &str| -> Vec<String> { s.split(' ').map(str::to_string).collect() };
    let body = TempDir::new("operate-body");
    let json_file = body.path().join("request.json");
    write(&json_file, row_body().to_string().as_bytes());
    let score = |extra: &str| {
        let mut a = args(&format!(
            "--json score store-7 --json-file {}",
            json_file.display()
        ));
        if !extra.is_empty() {
            a.extend(args(extra));
        }
        run(a)
    };
    let value = |answer: &Value| answer["outputs"][0]["data"][0].as_f64().unwrap();

    let models = ok(run(args("--json models --prefix store-")).await).json();
    assert_eq!(models, json!(["store-7"]));
    let versions = ok(run(args("--json versions store-7")).await).json();
    assert_eq!(
        (versions["versions"].clone(), versions["live"].clone()),
        (json!([1, 2]), json!(2))
    );
    let answer = ok(score("").await).json();
    assert_eq!(answer["model_version"], "2");
    assert!(close(
        value(&answer),
        linear(8, 102).predict(&ROW) as f64,
        TOLERANCE
    ));
    // The spelling: `score ID --json FILE` (the global `--json`, FILE as the body).
    let spelled = format!("score store-7 --json {}", json_file.display());
    let spelled = ok(run(args(&spelled)).await).json();
    assert_eq!(
        (&spelled["model_version"], &spelled["outputs"]),
        (&answer["model_version"], &answer["outputs"])
    );
    let both = format!("score store-7 {0} --json-file {0}", json_file.display());
    assert_eq!(run(args(&both)).await.code, 2, "two bodies are refused");

    // Pin rolls back, unpin rolls forward.
    ok(run(args("pin store-7 1")).await);
    assert_eq!(ok(score("").await).json()["model_version"], "1");
    let table = ok(run(args("versions store-7")).await).stdout;
    assert!(
        table
            .lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.contains("yes")),
        "{table}"
    );
    ok(run(args("unpin store-7")).await);
    assert_eq!(ok(score("").await).json()["model_version"], "2");

    // Canary: all of the unversioned requests, shown, promoted (pinned), dropped.
    ok(run(args("canary set store-7 1 100")).await);
    assert_eq!(ok(score("").await).json()["model_version"], "1");
    let shown = ok(run(args("--json canary show store-7")).await).json();
    assert_eq!(
        (
            shown["canary"]["version"].clone(),
            shown["canary"]["percent"].as_f64()
        ),
        (json!(1), Some(100.0))
    );
    ok(run(args("canary promote store-7")).await);
    let versions = ok(run(args("--json versions store-7")).await).json();
    assert_eq!(
        (versions["pinned"].clone(), versions["canary"].clone()),
        (json!(1), Value::Null)
    );
    ok(run(args("unpin store-7")).await);
    // Dropped: every unversioned request gets the live version again; nothing left to drop.
    ok(run(args("canary set store-7 1 100")).await);
    assert_eq!(ok(score("").await).json()["model_version"], "1");
    ok(run(args("canary drop store-7")).await);
    assert_eq!(ok(score("").await).json()["model_version"], "2");
    let gone = run(args("canary drop store-7")).await;
    assert_eq!(gone.code, 1);
    assert!(gone.stderr.contains("404"), "{}", gone.stderr);
    // A version named explicitly.
    assert_eq!(ok(score("--version 1").await).json()["model_version"], "1");

    // CSV rows, a header naming the features.
    let csv = body.path().join("rows.csv");
    let rows: Vec<[f32; 8]> = vec![ROW, [0.0; 8], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]];
    let mut text = String::from("f0,f1,f2,f3,f4,f5,f6,f7\n");
    for row in &rows {
        let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        text.push_str(&cells.join(","));
        text.push('\n');
    }
    write(&csv, text.as_bytes());
    let csv_answer = ok(run(args(&format!(
        "--json score store-7 --csv {}",
        csv.display()
    )))
    .await)
    .json();
    let got = csv_answer["outputs"][0]["data"].as_array().unwrap().clone();
    assert_eq!(got.len(), 3);
    for (row, got) in rows.iter().zip(&got) {
        let want = linear(8, 102).predict(row) as f64;
        assert!(
            close(got.as_f64().unwrap(), want, TOLERANCE),
            "{got} vs {want}"
        );
    }
    let csv_table = ok(run(args(&format!("score store-7 --csv {}", csv.display()))).await).stdout;
    assert_eq!(csv_table.lines().count(), 2 + rows.len(), "{csv_table}");

    // The pool view, as JSON and as a table.
    let status = ok(run(args("--json status")).await).json();
    let names: Vec<String> = status["scorers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 2);
    let table = ok(run(args("status")).await).stdout;
    assert!(table.contains("hit ratio"), "{table}");
    for name in &names {
        assert!(table.contains(name.as_str()), "{name} missing:\n{table}");
    }

    // Explain: where it lives, resident after a request, evicted after an unload.
    let (status, served_by, _) = infer(&reqwest::Client::new(), &proxy, "other-1").await;
    assert_eq!(status, 200);
    let explained = ok(run(args("--json explain other-1")).await).json();
    assert_eq!(
        explained["placement"]["owner"],
        served_by.as_str(),
        "{explained:#}"
    );
    assert_eq!(explained["scorer"]["scorer"], served_by.as_str());
    assert_eq!(explained["scorer"]["resident"].as_array().unwrap().len(), 1);
    let text = ok(run(args("explain other-1")).await).stdout;
    assert!(text.contains(&served_by) && text.contains("v1"), "{text}");
    let unloaded = reqwest::Client::new()
        .post(format!("{proxy}/v2/repository/models/other-1/unload"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(unloaded.status(), 200);
    let explained = ok(run(args("--json explain other-1")).await).json();
    assert!(
        explained["scorer"]["resident"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        explained["scorer"]["evictions"][0]["reason"], "unload",
        "{explained:#}"
    );

    // Errors: the server's message and exit code 1; bad usage or config is 2.
    let missing = run(args("versions no-such-model")).await;
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("404"), "{}", missing.stderr);
    let unreachable = mmctl(&["--proxy", "http://127.0.0.1:1", "status"], &[]).await;
    assert_eq!(unreachable.code, 1);
    assert!(
        unreachable.stderr.contains("cannot reach the proxy"),
        "{}",
        unreachable.stderr
    );
    let bad = mmctl(&["--proxy", "ftp://x", "status"], &[]).await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    let usage = mmctl(&["pin", "store-7"], &[]).await;
    assert_eq!(usage.code, 2);
}
