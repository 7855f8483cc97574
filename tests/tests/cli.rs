//! `mmctl` as a user runs it: the built binary against real stores (a directory, Azurite)
//! and a real pool (scorers behind the proxy), and `mmctl top` in a real terminal (tmux).
//!
//! Import: every model is checked as a scorer would check it before it is written; a
//! rerun skips what is already there by content hash (also after the import was killed
//! half-way); refusals are reported with their reason and make the exit code 1. Operate:
//! each command's effect is checked on the pool itself (scores, versions, the store).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use manymodels_models::{GeneratedModel, Spec};
use manymodels_tests::azurite::{self, Azurite};
use manymodels_tests::process::{Pool, binary};
use manymodels_tests::reference::{TOLERANCE, close};
use manymodels_tests::{ScorerProcess, TempDir, write_model};
use serde_json::{Value, json};

const KEY: &str = "cli-admin";

fn linear(features: usize, seed: u64) -> GeneratedModel {
    manymodels_models::build(&Spec::Linear { features, seed })
}

fn forest(seed: u64) -> GeneratedModel {
    manymodels_models::build(&Spec::Forest {
        features: 8,
        trees: 20,
        depth: 6,
        seed,
    })
}

const ROW: [f32; 8] = [0.5, -1.0, 2.0, 0.25, 1.5, -0.75, 0.1, 3.0];

/// The request scoring [`ROW`].
fn row_body() -> Value {
    json!({"inputs":[{"name":"input","shape":[1,8],"datatype":"FP32","data":ROW}]})
}

/// Scores [`ROW`] with `id` at `base` (a proxy or a scorer): the status, the scorer that
/// answered and the body.
async fn infer(client: &reqwest::Client, base: &str, id: &str) -> (u16, String, Value) {
    let url = format!("{base}/v2/models/{id}/infer");
    manymodels_tests::http::post_via(client, &url, &row_body()).await
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// The environment every mmctl run gets: no config file from the user's home.
fn isolated(command: &mut tokio::process::Command, home: &Path) {
    command
        .env("XDG_CONFIG_HOME", home)
        .env_remove("MMCTL_PROXY")
        .env_remove("MMCTL_KEY")
        .env_remove("MMCTL_STORE")
        .env_remove("MMCTL_CONFIG");
}

async fn mmctl(args: &[&str], env: &[(&str, &str)]) -> Run {
    let home = TempDir::new("mmctl-home");
    let mut command = tokio::process::Command::new(binary("mmctl"));
    isolated(&mut command, home.path());
    command.args(args).envs(env.iter().copied());
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("mmctl finishes within 2 minutes")
        .expect("mmctl runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Each record of an import report by (model, version).
fn outcomes(report: &Value) -> Vec<(String, Option<u64>, String)> {
    report["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|r| {
            (
                r["model"].as_str().unwrap().to_string(),
                r["version"].as_u64(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn record<'a>(report: &'a Value, model: &str) -> &'a Value {
    report["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == model)
        .unwrap_or_else(|| panic!("{model} not in the report: {report:#}"))
}

fn stored(store: &Path, id: &str, version: u64) -> Option<Vec<u8>> {
    std::fs::read(store.join(id).join(version.to_string()).join("model.onnx")).ok()
}

#[tokio::test]
async fn import_into_a_store_checks_every_model_and_resumes_by_content() {
    let src = TempDir::new("import-src");
    let store = TempDir::new("import-store");
    let s = src.path();
    write(&s.join("lin-a.onnx"), &linear(8, 1).bytes);
    write(&s.join("forest-b.onnx"), &forest(2).bytes);
    write(&s.join("multi/1/model.onnx"), &linear(8, 3).bytes);
    write(&s.join("multi/2/model.onnx"), &linear(8, 4).bytes);
    write(&s.join("broken.onnx"), b"this is not an ONNX model");
    write(&s.join("bad id.onnx"), &linear(8, 5).bytes);
    // A new version whose inputs differ from the live one: a scorer would refuse it.
    write_model(store.path(), "lin-c", 1, &linear(8, 6).bytes).unwrap();
    write(&s.join("lin-c.onnx"), &linear(12, 7).bytes);
    write(&s.join("README.txt"), b"not a model");
    let to = format!("dir:{}", store.path().display());
    let import = |extra: &'static [&'static str]| {
        let to = to.clone();
        let src = s.to_path_buf();
        async move {
            let mut args = vec!["--store", &to, "--json", "import"];
            let src = src.display().to_string();
            args.push(&src);
            args.extend_from_slice(&["--to", "store"]);
            args.extend_from_slice(extra);
            mmctl(&args, &[]).await
        }
    };

    // A dry run checks everything and writes nothing.
    let dry = import(&["--dry-run"]).await;
    assert_eq!(dry.code, 1, "refusals make the exit code 1: {}", dry.stderr);
    let report = dry.json();
    let mut expected = vec![
        ("bad id".to_string(), None, "refused".to_string()),
        ("broken".to_string(), Some(1), "refused".to_string()),
        ("forest-b".to_string(), Some(1), "would_publish".to_string()),
        ("lin-a".to_string(), Some(1), "would_publish".to_string()),
        ("lin-c".to_string(), Some(2), "refused".to_string()),
        ("multi".to_string(), Some(1), "would_publish".to_string()),
        ("multi".to_string(), Some(2), "would_publish".to_string()),
    ];
    assert_eq!(outcomes(&report), expected);
    assert!(
        stored(store.path(), "lin-a", 1).is_none(),
        "a dry run writes nothing"
    );
    let broken = record(&report, "broken")["detail"].as_str().unwrap();
    assert!(broken.contains("model"), "the loader's reason: {broken}");
    let lin_c = record(&report, "lin-c")["detail"].as_str().unwrap();
    assert!(lin_c.contains("differ"), "the signature check: {lin_c}");
    assert!(
        record(&report, "bad id")["detail"]
            .as_str()
            .unwrap()
            .contains("not a valid model id")
    );
    // The check is the scorer's: the engine it would serve with, and its memory.
    assert_eq!(record(&report, "forest-b")["engine"], "native");
    assert!(
        record(&report, "forest-b")["weight_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(
        report["summary"]["ignored_files"].as_array().unwrap().len(),
        1
    );

    // The import writes the checked models, byte for byte, and only those.
    let first = import(&[]).await;
    assert_eq!(first.code, 1);
    for e in expected.iter_mut() {
        if e.2 == "would_publish" {
            e.2 = "published".into();
        }
    }
    assert_eq!(outcomes(&first.json()), expected);
    assert_eq!(
        stored(store.path(), "lin-a", 1).unwrap(),
        linear(8, 1).bytes
    );
    assert_eq!(
        stored(store.path(), "forest-b", 1).unwrap(),
        forest(2).bytes
    );
    assert_eq!(
        stored(store.path(), "multi", 2).unwrap(),
        linear(8, 4).bytes
    );
    assert!(stored(store.path(), "broken", 1).is_none());
    assert!(stored(store.path(), "lin-c", 2).is_none());

    // Without the bad files, a rerun skips everything (identical content) and succeeds.
    for bad in ["broken.onnx", "bad id.onnx", "lin-c.onnx", "README.txt"] {
        std::fs::remove_file(s.join(bad)).unwrap();
    }
    let again = import(&[]).await;
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    let report = again.json();
    assert_eq!(report["summary"]["skipped"], 4);
    assert_eq!(report["summary"]["published"], 0);

    // A changed file is the next version; going back to an earlier file is a skip.
    write(&s.join("lin-a.onnx"), &linear(8, 9).bytes);
    let changed = import(&[]).await;
    assert_eq!(changed.code, 0);
    assert_eq!(record(&changed.json(), "lin-a")["version"], 2);
    assert_eq!(
        stored(store.path(), "lin-a", 2).unwrap(),
        linear(8, 9).bytes
    );
    write(&s.join("lin-a.onnx"), &linear(8, 1).bytes);
    let back = import(&[]).await;
    let lin_a = record(&back.json(), "lin-a").clone();
    assert_eq!(
        (lin_a["outcome"].as_str(), lin_a["version"].as_u64()),
        (Some("skipped"), Some(1))
    );
    assert!(stored(store.path(), "lin-a", 3).is_none());

    // A store-layout version that exists with other content is refused, never overwritten.
    write(&s.join("multi/2/model.onnx"), &linear(8, 10).bytes);
    let clash = import(&[]).await;
    assert_eq!(clash.code, 1);
    let multi: Vec<_> = outcomes(&clash.json())
        .into_iter()
        .filter(|o| o.0 == "multi")
        .collect();
    assert_eq!(
        multi[1],
        ("multi".to_string(), Some(2), "refused".to_string())
    );
    assert_eq!(
        stored(store.path(), "multi", 2).unwrap(),
        linear(8, 4).bytes
    );

    // People get a table with every refusal and its reason.
    let table = mmctl(
        &[
            "--store",
            &to,
            "import",
            &s.display().to_string(),
            "--to",
            "store",
        ],
        &[],
    )
    .await;
    assert_eq!(table.code, 1);
    assert!(table.stdout.contains("refused"), "{}", table.stdout);
    assert!(table.stdout.contains("other content"), "{}", table.stdout);
}

#[tokio::test]
async fn import_through_the_admin_api_goes_live_and_resumes_after_a_kill() {
    let store = TempDir::new("api-store");
    let pool = Pool::local(
        store.path(),
        2,
        &[&format!("auth.admin_keys={KEY}")],
        &[&format!("auth.admin_keys={KEY}")],
    );
    let src = TempDir::new("api-src");
    let models: Vec<(String, GeneratedModel)> = (0..60)
        .map(|i| (format!("shop-{i:03}"), linear(8, 1000 + i)))
        .collect();
    for (id, model) in &models {
        write(&src.path().join(format!("{id}.onnx")), &model.bytes);
    }
    let args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "--proxy",
            &pool.proxy.url,
            "--key",
            KEY,
            "--json",
            "import",
            &src.path().display().to_string(),
            "--jobs",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };

    // Killed half-way: whatever it wrote stays, complete; the rerun publishes the rest.
    let home = TempDir::new("mmctl-home");
    let mut command = tokio::process::Command::new(binary("mmctl"));
    isolated(&mut command, home.path());
    let mut child = command
        .args(args(&[]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let count = || {
        std::fs::read_dir(store.path())
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let started = Instant::now();
    while count() < 10 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().await.unwrap();
    let written_before = count();
    assert!(
        (10..60).contains(&written_before),
        "killed half-way, after {written_before} models"
    );
    let owned: Vec<String> = args(&[]);
    let owned: Vec<&str> = owned.iter().map(String::as_str).collect();
    let resumed = mmctl(&owned, &[]).await;
    assert_eq!(resumed.code, 0, "{}\n{}", resumed.stdout, resumed.stderr);
    let report = resumed.json();
    let skipped = report["summary"]["skipped"].as_u64().unwrap();
    let published = report["summary"]["published"].as_u64().unwrap();
    assert_eq!(skipped + published, 60);
    assert!(
        skipped as usize >= written_before - 1,
        "skipped {skipped}, {written_before} were written before the kill"
    );
    // Every model is there once, as version 1, and scores as its generator says.
    let client = reqwest::Client::new();
    for (id, model) in &models {
        assert!(stored(store.path(), id, 2).is_none(), "{id} written twice");
        let (_, _, answer) = infer(&client, &pool.proxy.url, id).await;
        let got = answer["outputs"][0]["data"][0].as_f64().unwrap();
        let want = model.predict(&ROW) as f64;
        assert!(close(got, want, TOLERANCE), "{id}: {got} vs {want}");
        assert_eq!(answer["model_version"], "1");
    }

    // A new file for a served model goes live through the API at once.
    write(&src.path().join("shop-000.onnx"), &linear(8, 77).bytes);
    let owned = args(&["--prefix", "shop-00"]);
    let owned: Vec<&str> = owned.iter().map(String::as_str).collect();
    let next = mmctl(&owned, &[]).await;
    assert_eq!(next.code, 0, "{}", next.stderr);
    let report = next.json();
    assert_eq!(
        report["summary"]["files"], 10,
        "--prefix keeps shop-000..009"
    );
    assert_eq!(record(&report, "shop-000")["version"], 2);
    assert_eq!(record(&report, "shop-000")["outcome"], "published");
    let (_, _, answer) = infer(&client, &pool.proxy.url, "shop-000").await;
    assert_eq!(answer["model_version"], "2");

    // A bad file: refused by the local check, or without it by the pool itself (422).
    write(&src.path().join("zz-broken.onnx"), b"\x08\x07garbage");
    let owned = args(&["--prefix", "zz-", "--no-check"]);
    let owned: Vec<&str> = owned.iter().map(String::as_str).collect();
    let refused = mmctl(&owned, &[]).await;
    assert_eq!(refused.code, 1);
    let detail = record(&refused.json(), "zz-broken")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.contains("the pool refused it") && detail.contains("422"),
        "{detail}"
    );
    // Without the admin key the pool refuses every write; the report says so.
    let refused = mmctl(
        &[
            "--proxy",
            &pool.proxy.url,
            "--json",
            "import",
            &src.path().join("shop-001.onnx").display().to_string(),
        ],
        &[],
    )
    .await;
    assert_eq!(refused.code, 1);
    let detail = record(&refused.json(), "shop-001")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.contains("401"), "{detail}");
}

#[tokio::test]
async fn import_into_azure_blob_skips_by_stored_digest_and_serves() {
    let azurite = Azurite::start().await;
    azurite.create_container("models").await;
    let src = TempDir::new("azure-src");
    for i in 0..6 {
        write(
            &src.path().join(format!("tenant-{i}.onnx")),
            &linear(8, 2000 + i).bytes,
        );
    }
    let env = [("AZURITE_BLOB_STORAGE_URL", azurite.url.as_str())];
    let src_arg = src.path().display().to_string();
    let args = [
        "--store",
        "azure://models/prod",
        "--azure-account",
        azurite::ACCOUNT,
        "--azure-access-key",
        azurite::KEY,
        "--azure-emulator",
        "--json",
        "import",
        &src_arg,
        "--to",
        "store",
    ];
    let import = || mmctl(&args, &env);
    let first = import().await;
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    assert_eq!(first.json()["summary"]["published"], 6);
    let again = import().await;
    assert_eq!(again.code, 0);
    assert_eq!(again.json()["summary"]["skipped"], 6);
    // A scorer on the same container serves them.
    let scorer = ScorerProcess::start(
        &[
            "store.kind=azure".to_string(),
            "store.azure.use_emulator=true".into(),
            "store.azure.container=models".into(),
            "store.azure.prefix=prod".into(),
        ],
        &env,
    );
    let (_, _, answer) = infer(&reqwest::Client::new(), &scorer.url, "tenant-3").await;
    let want = linear(8, 2003).predict(&ROW) as f64;
    let got = answer["outputs"][0]["data"][0].as_f64().unwrap();
    assert!(close(got, want, TOLERANCE), "{got} vs {want}");
}

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

#[tokio::test]
async fn configuration_comes_from_flags_environment_and_file() {
    let home = TempDir::new("mmctl-config");
    let file = home.path().join("mmctl.toml");
    write(
        &file,
        b"proxy = \"http://127.0.0.1:9\"\nkey = \"file-key\"\nstore = \"dir:/srv/m\"\n",
    );
    let file = file.display().to_string();
    let shown = mmctl(&["--config", &file, "--json", "config"], &[]).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let shown = shown.json();
    assert_eq!(shown["proxy"], "http://127.0.0.1:9");
    assert_eq!(shown["key"], "(set)", "the key never prints");
    assert_eq!(shown["sources"]["proxy"], "file");
    let overridden = mmctl(
        &["--config", &file, "--json", "config"],
        &[("MMCTL_PROXY", "http://127.0.0.1:7")],
    )
    .await
    .json();
    assert_eq!(overridden["proxy"], "http://127.0.0.1:7");
    assert_eq!(overridden["sources"]["proxy"], "flag or environment");
}

#[tokio::test]
async fn completions_load_in_bash() {
    let script = mmctl(&["completions", "bash"], &[]).await;
    assert_eq!(script.code, 0);
    for word in ["import", "canary", "explain", "top", "--dry-run"] {
        assert!(script.stdout.contains(word), "{word} not completed");
    }
    let dir = TempDir::new("completions");
    let path = dir.path().join("mmctl.bash");
    write(&path, script.stdout.as_bytes());
    let loaded = std::process::Command::new("bash")
        .args([
            "-c",
            &format!("source {} && complete -p mmctl", path.display()),
        ])
        .output()
        .unwrap();
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let zsh = mmctl(&["completions", "zsh"], &[]).await;
    assert!(zsh.code == 0 && zsh.stdout.contains("#compdef mmctl"));
}

/// `mmctl top` in tmux: it draws the pool (scorers, hit ratio, hottest models, an
/// eviction: hot-2 unloaded, or not admitted when the small budget is full) and redraws as it changes, and `q` gives the terminal back with exit code 0.
#[tokio::test]
async fn top_draws_the_pool_in_a_real_terminal() {
    let store = TempDir::new("top-store");
    for i in 0..4 {
        write_model(store.path(), &format!("hot-{i}"), 1, &forest(300 + i).bytes).unwrap();
    }
    // A small budget, so the resident bytes fill a visible part of the meter.
    let pool = Pool::local(
        store.path(),
        2,
        &["cache.budget=64KiB"],
        &["stats.push_interval=200ms"],
    );
    let client = reqwest::Client::new();
    let hit = |id: String| {
        let (client, base) = (client.clone(), pool.proxy.url.clone());
        async move {
            assert_eq!(infer(&client, &base, &id).await.0, 200);
        }
    };
    for round in 0..20 {
        hit(format!("hot-{}", round % 2)).await;
    }
    hit("hot-2".into()).await;
    client
        .post(format!(
            "{}/v2/repository/models/hot-2/unload",
            pool.proxy.url
        ))
        .send()
        .await
        .unwrap();

    let socket = format!("mmctl-top-{}", std::process::id());
    let dir = TempDir::new("top");
    let exit_file = dir.path().join("exit");
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux")
            .args(["-L", &socket])
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("tmux runs (cargo xtask test installs it)")
    };
    let shell = format!(
        "XDG_CONFIG_HOME={} {} --proxy {} top --interval 0.3; echo $? > {}",
        dir.path().display(),
        binary("mmctl").display(),
        pool.proxy.url,
        exit_file.display()
    );
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "150",
        "-y",
        "45",
        &shell,
    ]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    struct Server(String);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = std::process::Command::new("tmux")
                .args(["-L", &self.0, "kill-server"])
                .output();
        }
    }
    let _server = Server(socket.clone());
    let screen =
        || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned();
    let view: Value = client
        .get(format!("{}/v2/mm/pool", pool.proxy.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<String> = view["scorers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    let mut needles: Vec<String> = names.clone();
    needles.extend([
        "hit ratio".into(),
        "hot-0".into(),
        "hot-1".into(),
        "hot-2 v1".into(),
    ]);
    let wait_for = |needles: Vec<String>, limit: Duration| {
        let started = Instant::now();
        loop {
            let text = screen();
            if needles.iter().all(|n| text.contains(n.as_str())) {
                return text;
            }
            assert!(
                started.elapsed() < limit,
                "the screen never showed {needles:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let text = wait_for(needles, Duration::from_secs(20));
    eprintln!("mmctl top:\n{text}");
    let meters: Vec<&str> = text
        .lines()
        .filter(|l| names.iter().any(|n| l.contains(n.as_str())) && l.contains(" / 64.0 KiB"))
        .collect();
    assert!(
        meters.len() == 2 && meters.iter().any(|l| l.contains("█░")),
        "resident bytes are drawn against the budget:\n{text}"
    );
    // It redraws: a model hot only after the first frames shows up.
    for _ in 0..30 {
        hit("hot-3".into()).await;
    }
    wait_for(vec!["hot-3".into()], Duration::from_secs(20));
    tmux(&["send-keys", "-t", "top", "q"]);
    let started = Instant::now();
    while !exit_file.exists() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let code = std::fs::read_to_string(&exit_file).expect("top exited after q");
    assert_eq!(code.trim(), "0");
    // An unreachable proxy fails before taking the terminal.
    let down = mmctl(&["--proxy", "http://127.0.0.1:1", "top"], &[]).await;
    assert_eq!(down.code, 1);
    assert!(down.stderr.contains("cannot reach"), "{}", down.stderr);
}
